"""CMER's Focus-Adapter, written for the frozen EfficientNet-Lite towers of the offline teachers.

CMER (Zhang et al., "A Resource-Efficient Training Framework for Remote Sensing Text-Image
Retrieval", 2025) trains a *side branch* next to a frozen backbone: it reads intermediate features,
its *focus layer* suppresses background responses so that small targets count, and its output is
fused with the backbone's; nothing back-propagates through the backbone (hence ~49 % less training
memory). The paper's branch sits beside a ViT; where its description does not carry over to a CNN
or stays vague, this implementation chooses (and the choices are what is tested):

* **Taps**: outputs of stages 2, 4 and 5 (strides 8, 16, 32; :mod:`rsclip_core.teachers.taps`),
  average-pooled onto the stride-32 grid (7x7 at 224 px) so that all taps can be cached per view.
* **Fusion**: per tap a 1x1 projection to ``dim`` channels + GroupNorm(1) (a LayerNorm over
  channels), summed with a learned per-tap scale, then a depthwise 3x3 + pointwise MLP for local
  context (residual).
* **Focus layer**: a spatial gate ``g = sigmoid(conv3x3(fused))`` multiplies the fused map
  (background cells -> ~0), then *attention pooling* whose query comes from the backbone's pooled
  feature (global scene context decides which cells matter) with ``log g`` added to the scores, so
  gated-off cells also drop out of the pooling. ``heads`` query heads.
* **Fusion with the backbone**: the pooled adapter vector goes through a zero-initialised linear
  layer and is *added* to the projection of the backbone's pooled feature, so training starts
  exactly at the locked-tower teacher and the branch only adds what helps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn


@dataclass
class FocusAdapterConfig:
    """Width, attention heads and dropout of the Focus-Adapter side branch."""

    dim: int = 256
    heads: int = 4
    dropout: float = 0.1


class FocusAdapter(nn.Module):
    """Side branch: taps ``{name: [N, C, h, w]}`` + backbone pooled ``[N, P]`` -> ``[N, out_dim]``."""

    def __init__(self, tap_channels: dict[str, int], pooled_dim: int, out_dim: int,
                 cfg: FocusAdapterConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or FocusAdapterConfig()
        if cfg.dim % cfg.heads:
            raise ValueError(f"focus adapter: dim {cfg.dim} is not divisible by heads {cfg.heads}")
        self.cfg = cfg
        self.tap_names = sorted(tap_channels)
        self.proj = nn.ModuleDict({
            k: nn.Sequential(nn.Conv2d(c, cfg.dim, 1), nn.GroupNorm(1, cfg.dim)) for k, c in tap_channels.items()
        })
        self.tap_scale = nn.Parameter(torch.ones(len(self.tap_names)))
        self.context = nn.Sequential(
            nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1, groups=cfg.dim), nn.GroupNorm(1, cfg.dim),
            nn.Conv2d(cfg.dim, 2 * cfg.dim, 1), nn.GELU(), nn.Conv2d(2 * cfg.dim, cfg.dim, 1),
        )
        self.gate = nn.Conv2d(cfg.dim, 1, 3, padding=1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(cast(torch.Tensor, self.gate.bias), 2.0)  # start open (sigmoid 0.88) and learn what to close
        self.query = nn.Sequential(nn.LayerNorm(pooled_dim), nn.Linear(pooled_dim, cfg.dim))
        self.key = nn.Linear(cfg.dim, cfg.dim)
        self.value = nn.Linear(cfg.dim, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.dim, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def fused_map(self, taps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projected taps on the coarsest grid, summed, with local context: ``[N, dim, h, w]``."""
        grid = min(taps[k].shape[-1] for k in self.tap_names)
        fused = 0
        for i, k in enumerate(self.tap_names):
            x = taps[k].float()
            if x.shape[-1] != grid:
                x = nn.functional.avg_pool2d(x, x.shape[-1] // grid)
            fused = fused + self.tap_scale[i] * self.proj[k](x)
        return fused + self.context(fused)

    def focus(self, fused: torch.Tensor) -> torch.Tensor:
        """The focus layer's spatial gate ``[N, 1, h, w]`` in (0, 1)."""
        return torch.sigmoid(self.gate(fused))

    def forward(self, taps: dict[str, torch.Tensor], pooled: torch.Tensor) -> torch.Tensor:
        fused = self.fused_map(taps)
        gate = self.focus(fused)
        cells = (fused * gate).flatten(2).transpose(1, 2)  # [N, hw, dim]
        n, hw, d = cells.shape
        h = self.cfg.heads
        q = self.query(pooled.float()).view(n, h, 1, d // h)
        k = self.key(cells).view(n, hw, h, d // h).transpose(1, 2)
        v = self.value(cells).view(n, hw, h, d // h).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)  # [N, h, 1, hw]
        scores = scores + torch.log(gate.flatten(2).clamp_min(1e-6)).unsqueeze(1)
        pooled_cells = (scores.softmax(-1) @ v).reshape(n, d)
        return self.out(self.drop(self.norm(pooled_cells)))
