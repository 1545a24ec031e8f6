"""One encoder abstraction for evaluation: a torch model or an exported model directory.

Every encoder takes images as float32 NCHW RGB in [0, 1] (*not* standardised, the model-directory
contract of ``rsclip_core.spec``) and returns L2-normalised float32 numpy embeddings, so the same
runners score a training checkpoint, a teacher and the shipped ONNX model. Image files are
resized/cropped here with PIL, the way torchvision's ``Resize`` + ``CenterCrop`` do on PIL images.

This module is torch-free at import time; ``TorchEncoder`` imports torch when it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rsclip_core.evaluate.metrics import l2_normalize


class EvalInputError(ValueError):
    """A dataset, image or model given to evaluation cannot be used (message names the path)."""


@dataclass(frozen=True)
class ImageGeometry:
    """How an image file becomes the encoder's square input, plus the encoder's standardisation."""

    image_size: int
    interpolation: str = "bicubic"  # bicubic | bilinear
    resize_mode: str = "shortest"  # shortest (resize short side, centre crop) | squash
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @classmethod
    def from_any(cls, cfg: Any) -> ImageGeometry:
        """From a dict, a dataclass (``PreprocessConfig``, ``ModelMetadata``) or any object with
        ``image_size`` (and optionally ``interpolation``, ``resize_mode``, ``mean``, ``std``)."""
        get = cfg.get if isinstance(cfg, dict) else (lambda key, default=None: getattr(cfg, key, default))
        size = get("image_size")
        if size is None:
            raise EvalInputError(f"preprocess config {cfg!r} has no image_size")
        if isinstance(size, (tuple, list)):
            size = size[0]
        return cls(
            image_size=int(size),
            interpolation=str(get("interpolation", "bicubic") or "bicubic"),
            resize_mode=str(get("resize_mode", "shortest") or "shortest"),
            mean=tuple(float(v) for v in (get("mean", None) or (0.0, 0.0, 0.0))),
            std=tuple(float(v) for v in (get("std", None) or (1.0, 1.0, 1.0))),
        )


class Encoder(Protocol):
    """What the evaluation runners need from a model."""

    geometry: ImageGeometry

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, 3, H, W] in [0, 1] -> L2-normalised float32 [N, D]."""

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Strings -> L2-normalised float32 [N, D]."""


def load_image(path: str | Path, geometry: ImageGeometry) -> np.ndarray:
    """An image file as float32 [3, S, S] RGB in [0, 1], resized like torchvision on PIL images."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"{path}: cannot read image ({exc})") from exc
    size = geometry.image_size
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(
        geometry.interpolation
    )
    if resample is None:
        raise EvalInputError(f"unknown interpolation {geometry.interpolation!r}")
    if geometry.resize_mode == "squash":
        rgb = rgb.resize((size, size), resample)
    elif geometry.resize_mode == "shortest":
        width, height = rgb.size
        if (width, height) != (size, size):
            new_w = size if width <= height else int(size * width / height)
            new_h = size if height <= width else int(size * height / width)
            rgb = rgb.resize((new_w, new_h), resample)
            left = round((new_w - size) / 2.0)
            top = round((new_h - size) / 2.0)
            rgb = rgb.crop((left, top, left + size, top + size))
    else:
        raise EvalInputError(f"unknown resize_mode {geometry.resize_mode!r} (shortest | squash)")
    array = np.asarray(rgb, dtype=np.float32) / 255.0
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def load_images(paths: Sequence[str | Path], geometry: ImageGeometry) -> np.ndarray:
    """A batch of image files as float32 [N, 3, S, S] in [0, 1]."""
    return np.stack([load_image(path, geometry) for path in paths])


@dataclass
class FunctionEncoder:
    """An encoder from two plain functions (handy for teachers and tests)."""

    geometry: ImageGeometry
    image_fn: Callable[[np.ndarray], np.ndarray]
    text_fn: Callable[[list[str]], np.ndarray]

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return l2_normalize(self.image_fn(images))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.text_fn(list(texts)))


@dataclass
class TorchEncoder:
    """A torch image-text model (``RSClipModel`` or anything with ``encode_image``/``encode_text``
    taking standardised images and token ids) plus its tokenizer."""

    model: Any
    tokenizer: Callable[[list[str]], Any]
    geometry: ImageGeometry
    device: str = "cpu"
    _torch: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import torch

        self._torch = torch
        self.model = self.model.to(self.device).eval()
        self._mean = torch.tensor(self.geometry.mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self._std = torch.tensor(self.geometry.std, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Callable[[list[str]], Any], device: str = "cpu") -> TorchEncoder:
        """Geometry taken from ``model.preprocess`` (an ``RSClipModel``)."""
        return cls(model=model, tokenizer=tokenizer, geometry=ImageGeometry.from_any(model.preprocess), device=device)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
            emb = self.model.encode_image((batch - self._mean) / self._std, normalize=True)
        return l2_normalize(emb.float().cpu().numpy())

    def encode_text(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts))
            emb = self.model.encode_text(tokens.to(self.device), normalize=True)
        return l2_normalize(emb.float().cpu().numpy())


@dataclass
class ModelDirEncoder:
    """An exported model directory run by the torch-free ``rsclip_core.inference`` engine."""

    model: Any  # rsclip_core.inference EmbeddingModel
    geometry: ImageGeometry

    @classmethod
    def load(cls, model_dir: str | Path, **kwargs: Any) -> ModelDirEncoder:
        from rsclip_core.inference import load_model
        from rsclip_core.spec import ModelMetadata

        metadata = ModelMetadata.read(model_dir)
        return cls(model=load_model(model_dir, **kwargs), geometry=ImageGeometry.from_any(metadata))

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return l2_normalize(self.model.encode_images(np.ascontiguousarray(images, dtype=np.float32)))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.model.encode_text(list(texts)))
