"""The exported *model directory*: the one contract between export and inference.

Torch-free on purpose: `rsclip_core.export` writes it, `rsclip_core.inference` (and so the
QGIS plugin and `rsclip-map`) reads it. Everything inference needs to preprocess pixels and
text lives in ``rsclip.json`` (mirrored into each ONNX graph's ``metadata_props``), the way
open_clip's pretrained entries carry their preprocessing.

Layout::

    <model_dir>/
      rsclip.json       metadata (ModelMetadata below), the single source of preprocessing truth
      image.onnx        image encoder: float32 NCHW RGB; the graph does *no* standardisation:
                        callers scale pixels to [0, 1] and apply the metadata's mean/std first
                        ((x - mean) / std, as QGIS ONNX tools such as Deepness do) -> L2-normalised embeddings
                        (output ``embedding`` [N, D]); optionally a second output ``dense``
                        [N, D, h, w]: the projection applied to every location of the pooled
                        feature map, NOT normalised (so L2-normalising its spatial mean gives
                        ``embedding``); metadata ``dense_output`` / ``dense_stride`` / ``dense_grid``
                        say it is there, how many input pixels one cell spans and the grid [h, w]
      text.onnx         text encoder: int64 [N, context_length] token ids -> L2-normalised embeddings
      tokenizer.json    Hugging Face `tokenizers` file that reproduces the training tokenizer
      classes.json      optional default land-cover classes (name, prompts, colour)
      image.mlpackage/  optional Core ML (mlprogram, FP16), normalisation baked in, ImageType input
      text.mlpackage/   optional Core ML text encoder (int32 tokens)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

from rsclip_core.preprocess import PreprocessConfig, PreprocessConfigError
from rsclip_core.prompts import ZERO_SHOT_TEMPLATES

RGB = tuple[float, float, float]

FORMAT_VERSION = 1

METADATA_FILE = "rsclip.json"
IMAGE_ONNX = "image.onnx"
TEXT_ONNX = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
CLASSES_FILE = "classes.json"
IMAGE_MLPACKAGE = "image.mlpackage"
TEXT_MLPACKAGE = "text.mlpackage"

IMAGE_INPUT = "image"
TEXT_INPUT = "tokens"
EMBEDDING_OUTPUT = "embedding"
DENSE_OUTPUT = "dense"



def tokenizer_metadata_fields(
    kind: str, context_length: int, pad_id: int, sot_id: int | None, eot_id: int | None, lowercase: bool
) -> dict[str, Any]:
    """The ``ModelMetadata`` fields that describe a tokenizer (one place for their names)."""
    return {
        "tokenizer_kind": kind,
        "context_length": context_length,
        "pad_id": pad_id,
        "sot_id": sot_id,
        "eot_id": eot_id,
        "lowercase": lowercase,
    }


class ModelDirError(ValueError):
    """A model directory (or its metadata) is missing, incomplete or inconsistent."""


@dataclass
class ModelMetadata:
    """Metadata of an exported model: what inference needs, nothing more.

    The preprocessing fields (``image_size``, ``mean``, ``std``, ``interpolation``,
    ``resize_mode``) are stored flat in ``rsclip.json`` (the on-disk format since version 1);
    :attr:`preprocess` returns them as THE :class:`~rsclip_core.preprocess.PreprocessConfig`
    and :meth:`preprocess_fields` turns one into these fields.
    """

    model_name: str
    embed_dim: int
    image_size: int
    mean: list[float]
    std: list[float]
    context_length: int
    logit_scale: float
    interpolation: str = "bicubic"  # bicubic | bilinear
    resize_mode: str = "shortest"  # shortest (resize short side, centre crop) | squash
    tokenizer: str = TOKENIZER_FILE
    tokenizer_kind: str = "clip-bpe"  # clip-bpe | wordpiece
    pad_id: int = 0
    sot_id: int | None = None
    eot_id: int | None = None
    lowercase: bool = True
    prompt_templates: list[str] = field(default_factory=lambda: list(ZERO_SHOT_TEMPLATES))
    default_classes: str | None = None
    # Hints for tiling rasters (ground resolution the model was trained at, in m/px).
    resolution_m: float | None = None
    tiles_overlap: int = 0  # percent
    # Dense per-location embeddings (MaskCLIP-style), an extra output of image.onnx: its name
    # (None: the graph has none), the input pixels one cell spans and the grid [h, w] at image_size.
    dense_output: str | None = None
    dense_stride: int | None = None
    dense_grid: list[int] | None = None
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint, training run, licence...
    format_version: int = FORMAT_VERSION

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing these fields describe (validated)."""
        return PreprocessConfig(image_size=self.image_size, mean=cast(RGB, tuple(self.mean)),
                                std=cast(RGB, tuple(self.std)),
                                interpolation=self.interpolation, resize_mode=self.resize_mode)

    @staticmethod
    def preprocess_fields(cfg: PreprocessConfig) -> dict[str, Any]:
        """The ``ModelMetadata`` fields of a preprocessing config (their on-disk form)."""
        return cfg.to_dict()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "metadata") -> "ModelMetadata":
        known = {f.name for f in fields(cls)}
        required = {"model_name", "embed_dim", "image_size", "mean", "std", "context_length", "logit_scale"}
        missing = sorted(required - data.keys())
        if missing:
            raise ModelDirError(f"{origin}: missing keys {missing}")
        version = int(data.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ModelDirError(
                f"{origin}: format_version {version} is newer than this rsclip understands ({FORMAT_VERSION})"
            )
        meta = cls(**{k: v for k, v in data.items() if k in known})
        try:
            pre_fields = {k: getattr(meta, k) for k in ("image_size", "mean", "std", "interpolation", "resize_mode")}
            PreprocessConfig.from_dict(pre_fields, origin)
        except PreprocessConfigError as exc:
            raise ModelDirError(str(exc)) from exc
        if meta.dense_output is not None:
            grid = meta.dense_grid
            if (not isinstance(grid, (list, tuple)) or len(grid) != 2 or not all(isinstance(v, int) and v > 0 for v in grid)
                    or not isinstance(meta.dense_stride, int) or meta.dense_stride <= 0):
                raise ModelDirError(
                    f"{origin}: dense_output {meta.dense_output!r} needs dense_stride (int > 0) and "
                    f"dense_grid [h, w] (ints > 0), got {meta.dense_stride!r} and {grid!r}"
                )
            meta.dense_grid = [int(v) for v in grid]
        return meta

    @classmethod
    def read(cls, model_dir: str | Path) -> "ModelMetadata":
        path = Path(model_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelDirError(f"{path}: not found (is {model_dir} an exported rsclip model directory?)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelDirError(f"{path}: invalid JSON ({exc})") from exc
        return cls.from_dict(data, origin=str(path))

    def onnx_metadata_props(self) -> dict[str, str]:
        """Key/values for ONNX ``metadata_props`` (strings only).

        Besides rsclip's own keys, the ones other QGIS ONNX tools (e.g. Deepness) read:
        ``model_type``, ``resolution`` (cm/px), ``tiles_size``, ``tiles_overlap`` (percent),
        ``standardization_mean``, ``standardization_std``. Deepness parses every one of these
        values with ``json.loads`` (so ``model_type`` is a JSON string) and its code reads the tile
        size from ``tile_size`` while its docs say ``tiles_size``: both are written.
        """
        props = {"rsclip": self.to_json()}
        props.update(
            {
                "model_name": self.model_name,
                "embed_dim": str(self.embed_dim),
                "image_size": str(self.image_size),
                "context_length": str(self.context_length),
                "logit_scale": repr(float(self.logit_scale)),
                "tokenizer": self.tokenizer,
                "model_type": json.dumps("Recognition"),
                "tiles_size": str(self.image_size),
                "tile_size": str(self.image_size),
                "tiles_overlap": str(self.tiles_overlap),
                "standardization_mean": json.dumps([float(v) for v in self.mean]),
                "standardization_std": json.dumps([float(v) for v in self.std]),
            }
        )
        if self.resolution_m is not None:
            props["resolution"] = json.dumps(float(self.resolution_m) * 100.0)
        return props
