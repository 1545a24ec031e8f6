"""Single-input ``nn.Module`` views of an ``RSClipModel`` for tracing / export.

An RSClipModel (see ``docs/design.md``) has ``encode_image(images, normalize=True)`` and
``encode_text(tokens, normalize=True)``. ONNX and Core ML want one graph per encoder with a
single named input, so these wrappers expose exactly one of them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from rsclip_core.models.model import RSClipModel



@contextlib.contextmanager
def tracing_mode() -> Iterator[None]:
    """No grad, tracer warnings silenced, and nn.MultiheadAttention on its plain ops: its fused inference
    kernel has no ONNX or Core ML conversion. The fast-path setting is restored afterwards."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)


class ImageEncoder(nn.Module):
    """``image`` (already standardised, NCHW float32) -> L2-normalised embedding [N, D].

    This is what ``image.onnx`` contains: no mean/std inside the graph; inference applies them
    from the model directory's metadata (``rsclip_core.spec``).
    """

    def __init__(self, model: RSClipModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, normalize=True)


class PixelImageEncoder(nn.Module):
    """``image`` RGB in [0, 1] -> standardise with baked-in mean/std -> L2-normalised embedding.

    Used for Core ML, where the ``ImageType`` input already scales 0..255 pixels by 1/255 so a
    phone can pass a pixel buffer directly.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, model: RSClipModel, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image((image - self.mean) * self.inv_std, normalize=True)


class TextEncoder(nn.Module):
    """``tokens`` int [N, context_length] -> L2-normalised embedding [N, D].

    Integer inputs of any width are widened to int64 first (Core ML feeds int32).
    """

    def __init__(self, model: RSClipModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dtype != torch.long:
            tokens = tokens.long()
        return self.model.encode_text(tokens, normalize=True)
