"""``RSClipModel``: two towers, a learned temperature, preprocessing and tokenizer settings."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rsclip_core.preprocess import PreprocessConfig
from rsclip_core.spec import tokenizer_metadata_fields


@dataclass
class TokenizerSpec:
    """What the exporter needs to write ``tokenizer.json`` + metadata for the text tower."""

    kind: str  # clip-bpe | wordpiece
    context_length: int
    vocab_size: int
    tokenizer_json: Path | None = None  # HF tokenizer file (wordpiece towers)
    bpe_vocab: Path | None = None  # CLIP merges file (clip-bpe)
    pad_id: int = 0
    sot_id: int | None = None
    eot_id: int | None = None
    lowercase: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def metadata_fields(self) -> dict[str, Any]:
        """The ``ModelMetadata`` fields this spec fills."""
        return tokenizer_metadata_fields(
            self.kind, self.context_length, self.pad_id, self.sot_id, self.eot_id, self.lowercase
        )


class RSClipModel(nn.Module):
    """A CLIP-style dual encoder: ``encode_image``, ``encode_text``, ``forward``, ``reparameterize``."""

    def __init__(
        self,
        name: str,
        config: dict[str, Any],
        visual: nn.Module,
        text: nn.Module,
        preprocess: PreprocessConfig,
        tokenizer_spec: TokenizerSpec,
        init_logit_scale: float = math.log(1 / 0.07),
    ) -> None:
        super().__init__()
        self.name = name
        self.config = copy.deepcopy(config)
        self.embed_dim = int(config["embed_dim"])
        self.context_length = int(tokenizer_spec.context_length)
        self.preprocess = preprocess
        self.tokenizer_spec = tokenizer_spec
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.reparameterized = False
        self._frozen_modules: list[str] = []

    @property
    def image_size(self) -> int:
        return self.preprocess.image_size

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[N, 3, H, W]`` standardised images -> ``[N, embed_dim]``."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``LongTensor [N, context_length]`` -> ``[N, embed_dim]``."""
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale.exp()

    @torch.no_grad()
    def reparameterize(self) -> RSClipModel:
        """Fold every train-time branch (timm MobileOne/RepMixer blocks, MCt Text-RepMixers) in place.

        BatchNorm statistics are folded, so the model is put in eval mode first; returns ``self``.
        """
        self.eval()
        for tower in (self.visual, self.text):
            fold = getattr(tower, "reparameterize", None)
            if callable(fold):
                fold()
        self.reparameterized = True
        return self.eval()

    def train(self, mode: bool = True) -> RSClipModel:
        super().train(mode)
        for name in self._frozen_modules:  # locked towers keep their BatchNorm statistics
            self.get_submodule(name).eval()
        return self

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, image_size={self.image_size}"


def _layer_groups(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Ordered (name, module) groups of a trunk, with block containers expanded, parameterless dropped."""
    groups: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if name in ("blocks", "stages", "layer") and isinstance(child, (nn.Sequential, nn.ModuleList)):
            for sub_name, sub in child.named_children():
                inner = getattr(sub, "blocks", None)
                if isinstance(inner, (nn.Sequential, nn.ModuleList)) and name == "stages":
                    # fastvit stage: downsample/pos-emb first, then its blocks
                    for other_name, other in sub.named_children():
                        if other is inner:
                            groups += [(f"{name}.{sub_name}.blocks.{n}", m) for n, m in inner.named_children()]
                        else:
                            groups.append((f"{name}.{sub_name}.{other_name}", other))
                elif isinstance(sub, (nn.Sequential, nn.ModuleList)):
                    groups += [(f"{name}.{sub_name}.{n}", m) for n, m in sub.named_children()]
                else:
                    groups.append((f"{name}.{sub_name}", sub))
        elif name == "encoder" and hasattr(child, "layer"):  # Hugging Face BERT-like
            groups += [(f"encoder.layer.{n}", m) for n, m in child.get_submodule("layer").named_children()]
        else:
            groups.append((name, child))
    merged: list[tuple[str, nn.Module]] = []
    for group_name, group in groups:
        if not any(True for _ in group.parameters()):
            continue
        if merged and isinstance(group, nn.modules.batchnorm._BatchNorm) and not group_name.startswith(("blocks", "stages")):
            # a top-level norm belongs to the conv before it (stem conv + bn1, conv_head + bn2)
            prev_name, prev = merged[-1]
            merged[-1] = (prev_name, nn.ModuleList([prev, group]))
            continue
        merged.append((group_name, group))
    return merged


def _frozen_names(trunk: nn.Module, module: nn.Module, prefix: str) -> list[str]:
    """Qualified names (from the model) of ``module`` or, for merged groups, of its members."""
    names = {id(m): n for n, m in trunk.named_modules()}
    members = [module] if id(module) in names else list(module.children())
    return [f"{prefix}.{names[id(m)]}" for m in members]


def _tower_trunk(tower: nn.Module) -> tuple[str, nn.Module]:
    for attr in ("trunk", "transformer"):
        if hasattr(tower, attr):
            return attr, getattr(tower, attr)
    raise ValueError(f"{type(tower).__name__} has no trunk to lock")


def lock_towers(model: RSClipModel, image: bool = True, text: bool = True, unlock_last_n: int = 0) -> list[str]:
    """Freeze the pretrained trunks of the chosen towers (projections stay trainable).

    ``unlock_last_n`` leaves the last *n* layer groups (blocks / encoder layers / head convs) of
    each locked trunk trainable. Frozen parts stay in eval mode (BatchNorm statistics and dropout
    are frozen too) across ``model.train()``. Returns the names of the frozen modules.
    """
    frozen: list[str] = []
    for tower_name, lock in (("visual", image), ("text", text)):
        if not lock:
            continue
        trunk_attr, trunk = _tower_trunk(getattr(model, tower_name))
        groups = _layer_groups(trunk)
        keep = groups[len(groups) - unlock_last_n :] if unlock_last_n > 0 else []
        keep_ids = {id(m) for _, m in keep}
        for _name, module in groups:
            if id(module) in keep_ids:
                continue
            for p in module.parameters():
                p.requires_grad_(False)
            frozen.extend(_frozen_names(trunk, module, f"{tower_name}.{trunk_attr}"))
    model._frozen_modules = frozen
    model.train(model.training)
    return frozen


def unlock_towers(model: RSClipModel) -> None:
    """Undo :func:`lock_towers`: every parameter trainable again."""
    for p in model.parameters():
        p.requires_grad_(True)
    model._frozen_modules = []
    model.train(model.training)


def trainable_parameter_names(model: nn.Module) -> Iterable[str]:
    return (n for n, p in model.named_parameters() if p.requires_grad)
