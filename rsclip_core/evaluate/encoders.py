"""One encoder abstraction for evaluation: a torch model or an exported model directory.

Every encoder takes images as float32 NCHW RGB in [0, 1] (*not* standardised, the model-directory
contract of ``rsclip_core.spec``) and returns L2-normalised float32 numpy embeddings, so the same
runners score a training checkpoint, a teacher and the shipped ONNX model. Image files are
read with :func:`rsclip_core.preprocess.load_images` and the encoder's ``preprocess`` config (the
one preprocessing definition; the encoder applies its mean/std itself).

This module is torch-free at import time; ``TorchEncoder`` imports torch when it is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rsclip_core.evaluate.metrics import l2_normalize
from rsclip_core.preprocess import PreprocessConfig, standardise


class EvalInputError(ValueError):
    """A dataset, image or model given to evaluation cannot be used (message names the path)."""


class Encoder(Protocol):
    """What the evaluation runners need from a model."""

    preprocess: PreprocessConfig

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, 3, H, W] in [0, 1] -> L2-normalised float32 [N, D]."""

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Strings -> L2-normalised float32 [N, D]."""


@dataclass
class FunctionEncoder:
    """An encoder from two plain functions (handy for teachers and tests)."""

    preprocess: PreprocessConfig
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
    preprocess: PreprocessConfig
    device: str = "cpu"
    _torch: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import torch

        self._torch = torch
        self.model = self.model.to(self.device).eval()

    @classmethod
    def from_model(cls, model: Any, tokenizer: Callable[[list[str]], Any], device: str = "cpu") -> TorchEncoder:
        """Preprocessing taken from ``model.preprocess`` (an ``RSClipModel``)."""
        return cls(model=model, tokenizer=tokenizer, preprocess=model.preprocess, device=device)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(standardise(images, self.preprocess)).to(self.device)
            emb = self.model.encode_image(batch, normalize=True)
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
    preprocess: PreprocessConfig

    @classmethod
    def load(cls, model_dir: str | Path, **kwargs: Any) -> ModelDirEncoder:
        from rsclip_core.inference import load_model
        from rsclip_core.spec import ModelMetadata

        metadata = ModelMetadata.read(model_dir)
        return cls(model=load_model(model_dir, **kwargs), preprocess=metadata.preprocess)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        return l2_normalize(self.model.encode_images(np.ascontiguousarray(images, dtype=np.float32)))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return l2_normalize(self.model.encode_text(list(texts)))
