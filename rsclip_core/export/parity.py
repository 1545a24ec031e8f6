"""Numerical parity checks: onnxruntime vs torch, and reparameterized vs train-time model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rsclip_core import spec
from rsclip_core.export.errors import ParityError
from rsclip_core.export.onnx_export import forward_dense, example_images, example_tokens

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel

DEFAULT_ATOL = 1e-4
DEFAULT_MIN_COSINE = 0.9999


@dataclass
class ParityResult:
    """How closely ``candidate`` reproduces ``reference`` embeddings for one encoder."""

    name: str
    max_abs_diff: float
    min_cosine: float
    atol: float
    min_cosine_required: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.min_cosine >= self.min_cosine_required

    def __str__(self) -> str:
        flag = "ok" if self.ok else "FAIL"
        return (
            f"{self.name}: max|diff| {self.max_abs_diff:.2e} (<= {self.atol:g}), "
            f"min cos {self.min_cosine:.6f} (>= {self.min_cosine_required:g}) {flag}"
        )


@dataclass
class ParityReport:
    """All parity results of one check; ``raise_if_failed`` turns a failure into a ParityError."""

    results: list[ParityResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def __getitem__(self, name: str) -> ParityResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def summary(self) -> str:
        return "; ".join(str(r) for r in self.results)

    def raise_if_failed(self, context: str = "parity") -> ParityReport:
        failed = [str(r) for r in self.results if not r.ok]
        if failed:
            raise ParityError(f"{context}: {'; '.join(failed)}")
        return self


def compare_embeddings(
    name: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    *,
    atol: float = DEFAULT_ATOL,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> ParityResult:
    """Max absolute difference and smallest row-wise cosine similarity of two [N, D] arrays."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ParityError(f"{name}: shape {candidate.shape} != reference {reference.shape}")
    diff = float(np.abs(reference - candidate).max())
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12)
    return ParityResult(name, diff, float(cosine.min()), atol, min_cosine)


def _locations(dense: np.ndarray) -> np.ndarray:
    """[N, D, h, w] -> L2-normalised rows [N*h*w, D]."""
    rows = np.moveaxis(np.asarray(dense, dtype=np.float64), 1, -1).reshape(-1, dense.shape[1])
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def check_dense_mean(dense: np.ndarray, embedding: np.ndarray, *, atol: float = DEFAULT_ATOL,
                     min_cosine: float = DEFAULT_MIN_COSINE) -> ParityResult:
    """The identity of a GAP + linear head: L2-normalised spatial mean of ``dense`` == ``embedding``."""
    mean = np.asarray(dense, dtype=np.float64).mean(axis=(2, 3))
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return compare_embeddings("dense-mean", np.asarray(embedding, dtype=np.float64), mean,
                              atol=atol, min_cosine=min_cosine)


def check_dense_graph(model_dir: str | Path, *, batch: int = 3, seed: int = 0, atol: float = DEFAULT_ATOL,
                      min_cosine: float = DEFAULT_MIN_COSINE, raise_on_failure: bool = True) -> ParityReport:
    """Check ``image.onnx``'s ``dense`` output against its own ``embedding`` (no torch model needed).

    Runs standardised random images through the graph and compares the L2-normalised spatial mean of
    ``dense`` with ``embedding``; also checks the grid matches the metadata's ``dense_grid``.
    """
    from rsclip_core.inference.sessions import onnx_session

    model_dir = Path(model_dir)
    meta = spec.ModelMetadata.read(model_dir)
    if meta.dense_output is None:
        raise ParityError(f"{model_dir / spec.METADATA_FILE}: no dense_output")
    session = onnx_session(model_dir / spec.IMAGE_ONNX)
    rng = np.random.default_rng(seed)
    pixels = rng.random((batch, 3, meta.image_size, meta.image_size), dtype=np.float32)
    from rsclip_core.preprocess import standardise

    images = standardise(pixels, meta.preprocess)
    embedding, dense = session.run([spec.EMBEDDING_OUTPUT, meta.dense_output], {spec.IMAGE_INPUT: images})
    if list(dense.shape[2:]) != list(meta.dense_grid or []):
        raise ParityError(f"{model_dir}: dense grid {list(dense.shape[2:])} != metadata dense_grid {meta.dense_grid}")
    report = ParityReport([check_dense_mean(dense, embedding, atol=atol, min_cosine=min_cosine)])
    if raise_on_failure:
        report.raise_if_failed(str(model_dir))
    return report


def _torch_embeddings(model: RSClipModel, images: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        image = model.encode_image(images, normalize=True).float().numpy()
        text = model.encode_text(tokens, normalize=True).float().numpy()
    return image, text


def check_parity(
    model: RSClipModel,
    model_dir: str | Path,
    *,
    batch: int = 3,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    min_cosine: float = DEFAULT_MIN_COSINE,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compare ``image.onnx``/``text.onnx`` in ``model_dir`` (onnxruntime, CPU) with torch ``model``.

    ``model`` is the torch model the graphs were exported from (reparameterized, eval). Uses a
    batch size different from the tracing one so the dynamic batch axis is exercised too.
    """
    from rsclip_core.inference.sessions import onnx_session

    model_dir = Path(model_dir)
    images = example_images(model, batch=batch, seed=seed)
    tokens = example_tokens(model, batch=batch)
    ref_image, ref_text = _torch_embeddings(model.eval(), images, tokens)

    image_session = onnx_session(model_dir / spec.IMAGE_ONNX)
    text_session = onnx_session(model_dir / spec.TEXT_ONNX)
    onnx_image = image_session.run([spec.EMBEDDING_OUTPUT], {spec.IMAGE_INPUT: images.numpy()})[0]
    onnx_text = text_session.run([spec.EMBEDDING_OUTPUT], {spec.TEXT_INPUT: tokens.numpy().astype(np.int64)})[0]

    report = ParityReport(
        [
            compare_embeddings("onnx-image", ref_image, onnx_image, atol=atol, min_cosine=min_cosine),
            compare_embeddings("onnx-text", ref_text, onnx_text, atol=atol, min_cosine=min_cosine),
        ]
    )
    if spec.DENSE_OUTPUT in {o.name for o in image_session.get_outputs()}:
        with torch.no_grad():
            ref_dense = forward_dense(model, images).float().numpy()
        onnx_dense = image_session.run([spec.DENSE_OUTPUT], {spec.IMAGE_INPUT: images.numpy()})[0]
        # compared per location after L2 normalisation (how inference uses them)
        report.results.append(compare_embeddings(
            "onnx-dense", _locations(ref_dense), _locations(onnx_dense), atol=atol, min_cosine=min_cosine))
        report.results.append(check_dense_mean(onnx_dense, onnx_image, atol=atol, min_cosine=min_cosine))
    if raise_on_failure:
        report.raise_if_failed(str(model_dir))
    return report


def check_reparam_parity(
    train_model: RSClipModel,
    reparam_model: RSClipModel,
    *,
    batch: int = 3,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    min_cosine: float = DEFAULT_MIN_COSINE,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Compare a train-time model (eval mode) with its reparameterized copy on the same inputs."""
    images = example_images(train_model, batch=batch, seed=seed)
    tokens = example_tokens(train_model, batch=batch)
    train_image, train_text = _torch_embeddings(train_model.eval(), images, tokens)
    rep_image, rep_text = _torch_embeddings(reparam_model.eval(), images, tokens)
    report = ParityReport(
        [
            compare_embeddings("reparam-image", train_image, rep_image, atol=atol, min_cosine=min_cosine),
            compare_embeddings("reparam-text", train_text, rep_text, atol=atol, min_cosine=min_cosine),
        ]
    )
    if raise_on_failure:
        report.raise_if_failed(f"{getattr(train_model, 'name', 'model')} reparameterization")
    return report
