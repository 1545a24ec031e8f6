"""Intermediate-stage taps of the frozen EfficientNet-Lite image towers, and their feature cache.

The tuned teachers (:mod:`rsclip_core.teachers.tuned`) never back-propagate through the frozen part
of the image tower, so what that part computes for each stored view is cached once. Taps (timm
``tf_efficientnet_lite*``, stride in brackets; at 224 px):

* ``b2`` — output of stage 2 (stride 8, 40/48 channels), average-pooled 4x4 to the stride-32 grid
  (7x7 at 224 px): fine detail for small objects, 2 KB per view in float16;
* ``b4`` — output of stage 4 (stride 16, 112/120 channels), kept at full 14x14 resolution: the exact
  input of stage 5, so stages 5-6 can be fine-tuned on the cache (the adapter pools it 2x2);
* ``b5`` — output of stage 5 (stride 32, 192/208 channels, 7x7): the input of stage 6.

About 67 KB per view (Lite0, float16); 10,000 images ~ 0.7 GB. Pooled by fixed factors rather than
to a fixed grid, so any image size works (the grid is ``size / 32``). The taps are computed by an
onnxruntime export of :class:`TapTrunk` (about 3x faster than eager PyTorch on CPU) and cached by
:func:`rsclip_core.teachers.fit.cached_view_arrays` (resumable chunks).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from rsclip_core.data.readers import ImageTextRecord

TAP_NAMES = ("b2", "b4", "b5")
#: average-pool factor of each tap before caching (b2: stride 8 -> 32)
TAP_POOL = {"b2": 4, "b4": 1, "b5": 1}


class TapTrunk(nn.Module):
    """The frozen lower part of a timm EfficientNet-Lite (stem + stages 0-5) returning the taps.

    ``forward(x)`` -> ``(b2, b4, b5)`` tensors (pooled as :data:`TAP_POOL`); the layers are shared
    with (not copied from) ``trunk``.
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = cast(nn.Module, trunk.conv_stem), cast(nn.Module, trunk.bn1)
        self.blocks = nn.ModuleList(list(cast(nn.Sequential, trunk.blocks))[:6])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in (2, 4, 5):
                out[f"b{i}"] = x
        b2 = nn.functional.avg_pool2d(out["b2"], TAP_POOL["b2"])
        return b2, out["b4"], out["b5"]

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(TAP_NAMES, self(x)))


def tap_channels(tower: str) -> dict[str, int]:
    """Channels of each tap of packaged tower ``tower`` (no weights needed)."""
    import timm

    trunk = TapTrunk(timm.create_model("tf_" + tower, pretrained=False, num_classes=0)).eval()
    with torch.no_grad():
        return {k: int(v.shape[1]) for k, v in trunk.taps(torch.zeros(1, 3, 64, 64)).items()}


class OnnxTapTower:
    """:class:`TapTrunk` of a packaged tower exported once to ONNX, run with onnxruntime."""

    def __init__(self, tower: str, cache_dir: str | Path | None = None, threads: int | None = None) -> None:
        from rsclip_core.teachers.towers import cached_tower_session

        self.session = cached_tower_session(f"{tower}-taps.onnx", lambda path: export_tap_trunk_onnx(tower, path),
                                            cache_dir, threads)
        self.name = tower

    def __call__(self, images: Any) -> dict[str, np.ndarray]:
        """NCHW standardised float32 (numpy or torch) -> ``{"b2", "b4", "b5"}`` float32 arrays."""
        x = images.numpy() if hasattr(images, "numpy") else np.asarray(images, np.float32)
        outs = self.session.run(None, {"image": np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(TAP_NAMES, outs))


def export_tap_trunk_onnx(tower: str, path: str | Path) -> Path:
    """Export the packaged tower's :class:`TapTrunk` to ONNX (dynamic batch and size), atomically."""
    from rsclip_core.teachers.towers import load_image_tower

    path = Path(path)
    trunk = TapTrunk(load_image_tower(tower)).eval()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    axes = {"image": {0: "n", 2: "h", 3: "w"}, **{k: {0: "n", 2: f"{k}h", 3: f"{k}w"} for k in TAP_NAMES}}
    torch.onnx.export(trunk, (torch.zeros(1, 3, 224, 224),), str(tmp), input_names=["image"],
                      output_names=list(TAP_NAMES), dynamic_axes=axes, dynamo=False)
    os.replace(tmp, path)
    return path


def cached_tap_features(
    records: Sequence[ImageTextRecord],
    tower_name: str,
    cache_dir: str | Path,
    name: str,
    view: int = 0,
    image_size: int = 224,
    batch_size: int = 32,
    chunk_size: int = 256,
    progress: bool = True,
    tower: Any = None,
    dihedral: int = 0,
) -> dict[str, np.ndarray]:
    """float16 taps ``{"b2": [N, C2, g, g], "b4": [N, C4, 2g, 2g], "b5": [N, C5, g, g]}`` of
    ``records`` (view ``view``; ``g = image_size / 32``), cached in resumable chunks under
    ``cache_dir/<tower>-taps-<size>`` and read back memory-mapped.

    ``tower``: any callable NCHW tensor -> tap dict (default :class:`OnnxTapTower`). ``dihedral``
    (0-7): the view's dihedral transform (:mod:`rsclip_core.teachers.dihedral`; 0 = as is).
    """
    from functools import partial

    from rsclip_core.teachers.dihedral import dihedral_transform
    from rsclip_core.teachers.fit import cached_view_arrays
    from rsclip_core.teachers.towers import images_to_tensor, tower_preprocess

    cache = Path(cache_dir) / f"{tower_name}-taps-{image_size}"
    keys_hash = hashlib.sha256("\n".join(r.key for r in records).encode()).hexdigest()[:12]
    preprocess = tower_preprocess(image_size)
    model: list[Any] = [tower]

    def compute(views: list[Any]) -> dict[str, np.ndarray]:
        if model[0] is None:
            model[0] = OnnxTapTower(tower_name, cache_dir=Path(cache_dir).parent)
        with torch.inference_mode():
            out = model[0](images_to_tensor(views, preprocess))
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

    suffix = f"-d{dihedral}" if dihedral else ""
    return cached_view_arrays(records, cache, f"{name}-v{view}{suffix}-{keys_hash}", compute, view, image_size,
                              batch_size, chunk_size, progress, f"{tower_name} taps {name} v{view}{suffix}",
                              transform=partial(dihedral_transform, which=dihedral) if dihedral else None)
