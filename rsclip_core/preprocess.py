"""THE image preprocessing of rsclip: one config type, one resize/crop/standardise definition.

Every path that turns pixels into an image-tower input goes through this module: training
(``train.data`` + ``data.augment``), the reinforcement / teacher towers, evaluation, export
calibration and example inputs, and inference (``inference.model`` standardisation, the
``inference.raster`` resampling names). Like open_clip's ``PreprocessCfg`` +
``image_transform_v2``, a :class:`PreprocessConfig` says everything, and the model directory's
metadata (``rsclip_core.spec.ModelMetadata.preprocess``) converts to the same type.

Importable without torch or PIL (PIL is imported inside the functions that resample).

The definition
--------------
* **Geometry** — one resample per image. :func:`crop_box` picks the source region
  (``shortest``: the largest centred square, offsets floored; ``squash``: the whole image) and
  :func:`resample` maps that box onto ``image_size x image_size`` in ONE PIL ``resize(box=...)``
  with the config's ``interpolation`` (PIL's filters widen with the scale, i.e. antialias when
  shrinking). For ``shortest`` this selects the same pixels as torchvision's
  ``Resize(S) + CenterCrop(S)`` (up to sub-pixel rounding) without resampling twice.
  Augmented training views use the same :func:`resample` with the *stored* crop box
  (``data.augment.reapply(..., size=, interpolation=)``), so a view is produced at the
  student's size directly; the un-augmented centre view (``data.augment.center_view_params``)
  is exactly :func:`crop_box`.
* **Pixels** — :func:`to_pixels`: 8-bit RGB -> float32 CHW in [0, 1] (``/ 255``).
* **Standardisation** — :func:`standardise`: ``(x - mean) * (1 / std)`` in float32, the formula
  the ONNX contract (``rsclip_core.spec``) and the Core ML wrapper use too.

Image files vs raster windows
-----------------------------
Same: the config's ``image_size``, the standardisation (applied by ``EmbeddingModel``), the
interpolation *name* (mapped to GDAL by :data:`GDAL_RESAMPLING`: bicubic -> cubic, ...), and
the output range [0, 1]. Different: raster windows are square ground footprints chosen by the
tiling (so ``resize_mode`` does not apply), resampled on read by GDAL (its kernels are close
to but not bit-identical with PIL's), scaled to [0, 1] by the raster's value stretch in float
(no 8-bit rounding), with nodata/padding filled; image files are decoded to 8-bit RGB by PIL
and divided by 255.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: interpolation names a config may use (PIL filter of the same name; GDAL: :data:`GDAL_RESAMPLING`)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")
#: how an image is fitted to the square input
RESIZE_MODES = ("shortest", "squash")
#: interpolation name -> GDAL / rasterio ``Resampling`` member name (raster windows)
GDAL_RESAMPLING = {"bilinear": "bilinear", "bicubic": "cubic", "nearest": "nearest", "lanczos": "lanczos"}

#: a source region ``(left, top, right, bottom)`` in pixels (PIL's box convention)
Box = tuple[int, int, int, int]


class PreprocessConfigError(ValueError):
    """A preprocessing config with an unusable value (the message names the field)."""


class ImageReadError(ValueError):
    """An image file that cannot be decoded (the message names the file)."""


def _triple(name: str, value: Any, origin: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise PreprocessConfigError(f"{origin}: {name} must be 3 numbers (RGB), got {value!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise PreprocessConfigError(f"{origin}: {name} must be 3 finite numbers (RGB), got {value!r}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class PreprocessConfig:
    """How pixels become the image tower's input: square ``image_size``, mean/std, resampling."""

    image_size: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"  # one of INTERPOLATIONS
    resize_mode: str = "shortest"  # shortest (largest centred square) | squash (whole image)

    def __post_init__(self) -> None:
        self._validate("preprocess config")

    def _validate(self, origin: str) -> None:
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) <= 0:
            raise PreprocessConfigError(f"{origin}: image_size must be a positive integer, got {size!r}")
        object.__setattr__(self, "image_size", int(size))
        object.__setattr__(self, "mean", _triple("mean", self.mean, origin))
        std = _triple("std", self.std, origin)
        if any(v <= 0 for v in std):
            raise PreprocessConfigError(f"{origin}: std values must be > 0, got {list(std)}")
        object.__setattr__(self, "std", std)
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessConfigError(
                f"{origin}: interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise PreprocessConfigError(
                f"{origin}: resize_mode {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for mean/std)."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "resize_mode": self.resize_mode}

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "preprocess config") -> PreprocessConfig:
        """From a dict with these field names; unknown keys and bad values name ``origin``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreprocessConfigError(f"{origin}: unknown preprocess keys {unknown} (known: {sorted(known)})")
        if "image_size" not in data:
            raise PreprocessConfigError(f"{origin}: image_size missing")
        config = object.__new__(cls)
        defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        for key, value in {**defaults, **data}.items():
            object.__setattr__(config, key, value)
        config._validate(origin)
        return config

    def replace(self, **changes: Any) -> PreprocessConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


# --- geometry ------------------------------------------------------------------------------------


def crop_box(width: int, height: int, resize_mode: str = "shortest") -> Box:
    """The source region an image of ``width`` x ``height`` contributes to the square input."""
    if width <= 0 or height <= 0:
        raise PreprocessConfigError(f"image size must be positive, got {width}x{height}")
    if resize_mode == "squash":
        return (0, 0, int(width), int(height))
    if resize_mode != "shortest":
        raise PreprocessConfigError(f"resize_mode {resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def pil_filter(interpolation: str) -> Any:
    """The PIL resampling filter of an interpolation name."""
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise PreprocessConfigError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    return getattr(Image.Resampling, interpolation.upper())


def gdal_resampling(interpolation: str) -> str:
    """The GDAL / rasterio ``Resampling`` name of an interpolation name (raster windows)."""
    if interpolation not in GDAL_RESAMPLING:
        raise PreprocessConfigError(f"interpolation {interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
    return GDAL_RESAMPLING[interpolation]


def resample(image: Any, box: Sequence[float], size: tuple[int, int], interpolation: str) -> Any:
    """PIL ``image``'s region ``box`` -> a ``size`` = (width, height) image, in ONE resample."""
    left, top, right, bottom = box
    if right <= left or bottom <= top or left < 0 or top < 0 or right > image.width or bottom > image.height:
        raise PreprocessConfigError(f"box {tuple(box)} does not fit an image of {image.width}x{image.height}")
    return image.resize((int(size[0]), int(size[1])), pil_filter(interpolation), box=tuple(box))


def resize_and_crop(image: Any, cfg: PreprocessConfig) -> Any:
    """A PIL image as the config's RGB ``image_size`` square (geometry of :func:`crop_box`)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    box = crop_box(image.width, image.height, cfg.resize_mode)
    return resample(image, box, (cfg.image_size, cfg.image_size), cfg.interpolation)


# --- pixels and standardisation ------------------------------------------------------------------


def to_pixels(image: Any) -> np.ndarray:
    """An RGB PIL image (or uint8 HWC array) -> float32 CHW in [0, 1]."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise PreprocessConfigError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def standardise(pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """float32 [0, 1] pixels (CHW or NCHW) -> ``(x - mean) * (1 / std)`` float32."""
    mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
    inv_std = (np.float32(1.0) / np.asarray(cfg.std, dtype=np.float32)).reshape(3, 1, 1)
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise PreprocessConfigError(f"expected float32 [3, H, W] or [N, 3, H, W] pixels, got shape {x.shape}")
    return np.ascontiguousarray((x - mean) * inv_std, dtype=np.float32)


def image_to_input(image: Any, cfg: PreprocessConfig) -> np.ndarray:
    """A PIL image -> the tower's standardised float32 [3, S, S] input (geometry + standardise).

    An image already at ``S x S`` is used as is (no resample).
    """
    return standardise(to_pixels(resize_and_crop(image, cfg)), cfg)


def load_image(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    """An image file -> float32 [3, S, S] RGB in [0, 1] (what ``EmbeddingModel.encode_images`` takes)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from exc
    return to_pixels(resize_and_crop(rgb, cfg))


def load_images(paths: Sequence[str | Path], cfg: PreprocessConfig) -> np.ndarray:
    """Image files -> float32 [N, 3, S, S] in [0, 1]."""
    if not paths:
        return np.zeros((0, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    return np.stack([load_image(path, cfg) for path in paths])


__all__ = [
    "GDAL_RESAMPLING",
    "INTERPOLATIONS",
    "RESIZE_MODES",
    "Box",
    "ImageReadError",
    "PreprocessConfig",
    "PreprocessConfigError",
    "crop_box",
    "gdal_resampling",
    "image_to_input",
    "load_image",
    "load_images",
    "pil_filter",
    "resample",
    "resize_and_crop",
    "standardise",
    "to_pixels",
]
