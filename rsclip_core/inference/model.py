"""Loading an exported model directory (``rsclip_core.spec``) and running it with onnxruntime.

`EmbeddingModel` takes RGB pixels in [0, 1] and standardises them itself with the metadata's
preprocessing (:func:`rsclip_core.preprocess.standardise`; the image graph expects standardised
input, see ``rsclip_core.export``); text goes through the
model's own ``tokenizer.json``. Everything returned is float32, L2-normalised.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core import spec
from rsclip_core.prompts import PromptTemplateError, fill_prompts
from rsclip_core.inference.errors import InvalidModelError, RsclipFileNotFoundError, RsclipInputError
from rsclip_core.inference.sessions import onnx_session
from rsclip_core.preprocess import standardise

MODEL_ENV = "RSCLIP_MODEL"
TEXT_BATCH = 64


def default_model_dir() -> Path:
    """``$RSCLIP_MODEL`` if set, else the bundled model (``rsclip_core.resources``); clear error otherwise."""
    from rsclip_core import resources

    env = os.environ.get(MODEL_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise RsclipFileNotFoundError(f"{MODEL_ENV}={env}: no such model directory")
        return path
    try:
        return resources.bundled_model_dir()
    except resources.ResourceMissingError as exc:
        raise RsclipInputError(
            f"no model given and no bundled default model ({exc}): "
            f"pass -m MODEL_DIR (an exported rsclip model directory) or set {MODEL_ENV}"
        ) from exc


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


class EmbeddingModel:
    """An exported rsclip model: image and text encoders sharing one embedding space."""

    def __init__(self, model_dir: Path, metadata: spec.ModelMetadata, image_session: Any,
                 text_session: Any, tokenizer: Any) -> None:
        self.model_dir = Path(model_dir)
        self.metadata = metadata
        self.image_session = image_session
        self.text_session = text_session
        self.tokenizer = tokenizer
        self.preprocess = metadata.preprocess
        self._identity_norm = self.preprocess.mean == (0.0, 0.0, 0.0) and self.preprocess.std == (1.0, 1.0, 1.0)
        self._fingerprint: str | None = None

    @property
    def embed_dim(self) -> int:
        return int(self.metadata.embed_dim)

    @property
    def image_size(self) -> int:
        return int(self.metadata.image_size)

    @property
    def logit_scale(self) -> float:
        return float(self.metadata.logit_scale)

    @property
    def fingerprint(self) -> str:
        """Hash of the image encoder and its preprocessing: what tile embeddings depend on."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            m = self.metadata
            h.update(repr((m.model_name, m.embed_dim, m.image_size, list(m.mean), list(m.std),
                           m.interpolation, m.resize_mode)).encode())
            with open(self.model_dir / spec.IMAGE_ONNX, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """float32 NCHW RGB in [0, 1] (``image_size`` square) -> [N, D] L2-normalised."""
        images = np.asarray(images, dtype=np.float32)
        S = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (S, S):
            raise RsclipInputError(f"encode_images: expected float32 [N, 3, {S}, {S}], got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        if self._identity_norm:
            x = np.ascontiguousarray(images)
        else:
            x = standardise(images, self.preprocess)
        out = self.image_session.run([spec.EMBEDDING_OUTPUT], {spec.IMAGE_INPUT: x})[0]
        return self._check(out, len(images), "image")

    @property
    def has_dense(self) -> bool:
        """The image graph has the ``dense`` per-location output (metadata ``dense_output``)."""
        return self.metadata.dense_output is not None

    def encode_images_dense(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like `encode_images`, plus the dense embeddings ``[N, gh, gw, D]`` L2-normalised per location."""
        images = np.asarray(images, dtype=np.float32)
        if not self.has_dense:
            raise InvalidModelError(f"{self.model_dir}: the image graph has no dense output (re-export the model)")
        S = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (S, S):
            raise RsclipInputError(f"encode_images_dense: expected float32 [N, 3, {S}, {S}], got {images.shape}")
        x = np.ascontiguousarray(images) if self._identity_norm else standardise(images, self.preprocess)
        out, dense = self.image_session.run([spec.EMBEDDING_OUTPUT, self.metadata.dense_output], {spec.IMAGE_INPUT: x})
        grid = tuple(self.metadata.dense_grid or ())
        if dense.ndim != 4 or dense.shape[:2] != (len(images), self.embed_dim) or tuple(dense.shape[2:]) != grid:
            raise InvalidModelError(f"{self.model_dir}: dense output has shape {dense.shape}, expected "
                                    f"({len(images)}, {self.embed_dim}, {grid[0]}, {grid[1]})")
        return self._check(out, len(images), "image"), l2_normalize(np.moveaxis(dense, 1, -1))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> [N, D] L2-normalised; empty strings are rejected."""
        texts = [str(t) for t in texts]
        if not texts:
            raise RsclipInputError("encode_text: no text given")
        if any(not t.strip() for t in texts):
            raise RsclipInputError("query: empty text")
        parts = []
        for start in range(0, len(texts), TEXT_BATCH):
            tokens = np.asarray(self.tokenizer(texts[start:start + TEXT_BATCH]), dtype=np.int64)
            out = self.text_session.run([spec.EMBEDDING_OUTPUT], {spec.TEXT_INPUT: tokens})[0]
            parts.append(self._check(out, len(tokens), "text"))
        return np.concatenate(parts, axis=0)

    def encode_prompts(self, names: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """One embedding per name: the normalised mean over the prompt templates (CLIP ensembling)."""
        names = [str(n) for n in names]
        if not names:
            raise RsclipInputError("encode_prompts: no names given")
        templates = list(templates if templates is not None else self.metadata.prompt_templates) or ["{}"]
        try:
            texts = [prompt for n in names for prompt in fill_prompts(n, templates)]
        except PromptTemplateError as exc:
            raise RsclipInputError(str(exc)) from exc
        emb = self.encode_text(texts).reshape(len(names), len(templates), -1).mean(axis=1)
        return l2_normalize(emb)

    def _check(self, out: np.ndarray, n: int, which: str) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (n, self.embed_dim):
            raise InvalidModelError(
                f"{self.model_dir}: {which} encoder returned shape {out.shape}, expected ({n}, {self.embed_dim})"
            )
        return l2_normalize(out)

    def __repr__(self) -> str:
        return f"EmbeddingModel({self.metadata.model_name!r}, dim={self.embed_dim}, dir={str(self.model_dir)!r})"


def _session(path: Path, providers: Sequence[str] | None, threads: int | None) -> Any:
    if not path.is_file():
        raise InvalidModelError(f"{path}: missing (is {path.parent} an exported rsclip model directory?)")
    return onnx_session(path, providers=providers, threads=threads)


def _check_io(session: Any, path: Path, input_name: str, rank: int, static: dict, dense: str | None = None) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if input_name not in inputs:
        raise InvalidModelError(f"{path}: expected input {input_name!r}, found {sorted(inputs)}")
    if spec.EMBEDDING_OUTPUT not in outputs:
        raise InvalidModelError(f"{path}: expected output {spec.EMBEDDING_OUTPUT!r}, found {sorted(outputs)}")
    if dense is not None and dense not in outputs:
        raise InvalidModelError(f"{path}: metadata says dense_output {dense!r}, the graph has {sorted(outputs)}")
    shape = inputs[input_name].shape
    if len(shape) != rank:
        raise InvalidModelError(f"{path}: input {input_name!r} has rank {len(shape)}, expected {rank}")
    for axis, want in static.items():
        got = shape[axis]
        if isinstance(got, int) and got != want:
            raise InvalidModelError(f"{path}: input {input_name!r} axis {axis} is {got}, metadata says {want}")


def load_model(model_dir: str | os.PathLike | None = None, *, providers: Sequence[str] | None = None,
               threads: int | None = None) -> EmbeddingModel:
    """Load and check an exported model directory (default: `default_model_dir()`)."""
    from rsclip_core.inference.tokenizer import TextTokenizer

    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not path.exists():
        raise RsclipFileNotFoundError(f"{path}: no such model directory")
    if not path.is_dir():
        raise InvalidModelError(f"{path}: not a directory (expected an exported rsclip model directory)")
    try:
        metadata = spec.ModelMetadata.read(path)
    except spec.ModelDirError as exc:
        raise InvalidModelError(str(exc)) from exc
    except TypeError as exc:
        raise InvalidModelError(f"{path / spec.METADATA_FILE}: invalid metadata ({exc})") from exc
    image = _session(path / spec.IMAGE_ONNX, providers, threads)
    _check_io(image, path / spec.IMAGE_ONNX, spec.IMAGE_INPUT, 4,
              {1: 3, 2: metadata.image_size, 3: metadata.image_size}, metadata.dense_output)
    text = _session(path / spec.TEXT_ONNX, providers, threads)
    _check_io(text, path / spec.TEXT_ONNX, spec.TEXT_INPUT, 2, {1: metadata.context_length})
    tok_path = path / metadata.tokenizer
    if not tok_path.is_file():
        raise InvalidModelError(f"{tok_path}: tokenizer missing")
    try:
        tokenizer = TextTokenizer.from_model_dir(path, metadata)
    except Exception as exc:
        raise InvalidModelError(f"{tok_path}: cannot load tokenizer ({exc})") from exc
    return EmbeddingModel(path, metadata, image, text, tokenizer)


def describe_model(model_dir: str | os.PathLike | None = None) -> dict:
    """Metadata, files and ONNX input/output signatures of a model directory (for ``rsclip-map info``)."""
    model = load_model(model_dir)
    files = {}
    for p in sorted(model.model_dir.iterdir()):
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        files[p.name] = size
    def sig(session: Any) -> dict:
        return {
            "inputs": {i.name: [i.type, list(i.shape)] for i in session.get_inputs()},
            "outputs": {o.name: [o.type, list(o.shape)] for o in session.get_outputs()},
        }
    from dataclasses import asdict

    for name, session in (("image.onnx", model.image_session), ("text.onnx", model.text_session)):
        for out in session.get_outputs():
            if out.name == model.metadata.dense_output:
                continue
            dim = out.shape[-1] if out.shape else None
            if isinstance(dim, int) and dim != model.metadata.embed_dim:
                raise InvalidModelError(
                    f"{model.model_dir}: rsclip.json says embed_dim {model.metadata.embed_dim} but {name} "
                    f"outputs {out.name} with {dim} dims; re-export the model")
    return {
        "model_dir": str(model.model_dir),
        "metadata": asdict(model.metadata),
        "files": files,
        "image_onnx": sig(model.image_session),
        "text_onnx": sig(model.text_session),
        "fingerprint": model.fingerprint,
    }
