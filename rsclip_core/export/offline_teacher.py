"""Fitted offline-teacher checkpoints (``rsclip teacher fit``) -> an exportable ``RSClipModel``.

A teacher-fit checkpoint (format ``rsclip-offline-teacher/1``) holds only the projection heads
(LayerNorm + linear + residual GELU MLP) fitted on *cached* tower features: pooled 1280-d
EfficientNet-Lite features, and all-MiniLM-L6-v2 mean-pooled sentence embeddings **L2-normalised**
(as sentence-transformers returns them). The registered ``teacher-effnetlite*-minilm`` configs
have plain linear projections instead, so ``create_model(name, checkpoint)`` cannot load it. Here
the registered model is built with its packaged tower weights and its projections are replaced
by the fitted heads (text: L2-normalise, then the head), the fit's image size and temperature.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rsclip_core.export.errors import CheckpointMismatchError

TEACHER_FORMAT = "rsclip-offline-teacher/1"


class L2Normalize(nn.Module):
    """``x / ||x||`` over the last axis (what sentence-transformers' ``normalize_embeddings`` does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


def is_teacher_checkpoint(path: str | Path) -> bool:
    """True if ``path`` is a teacher-fit checkpoint (a dict with the offline-teacher format tag)."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file at all: let the normal loader report it
        return False
    return isinstance(payload, dict) and payload.get("format") == TEACHER_FORMAT


def model_from_teacher_checkpoint(name: str, checkpoint: str | Path) -> Any:
    """Registered offline teacher ``name`` with the fitted heads of ``checkpoint`` (eval mode)."""
    from rsclip_core.models import create_model, get_model_config
    from rsclip_core.reinforce.teacher_fit import load_teacher_checkpoint
    from rsclip_core.reinforce.towers import tower_preprocess

    payload, heads = load_teacher_checkpoint(checkpoint)
    config = get_model_config(name)
    timm_name = str(config["vision_cfg"].get("timm_model_name", ""))
    if timm_name.removeprefix("tf_") != payload["image_tower"]:
        raise CheckpointMismatchError(
            f"{checkpoint}: teacher fitted on image tower {payload['image_tower']!r}, "
            f"but model {name!r} uses {timm_name!r}"
        )
    if config["text_cfg"].get("type") != "hf" or payload["text_tower"] != "all-MiniLM-L6-v2":
        raise CheckpointMismatchError(f"{checkpoint}: text tower {payload['text_tower']!r} does not fit {name!r}")
    model = create_model(name, pretrained_towers=True)  # packaged ImageNet / MiniLM weights
    model.visual.proj = heads["image"]
    model.text.proj = nn.Sequential(L2Normalize(), heads["text"])
    model.embed_dim = int(payload["embed_dim"])
    model.config["embed_dim"] = model.embed_dim
    # what the fit's views were (rsclip_core.reinforce.towers.tower_preprocess)
    model.preprocess = tower_preprocess(int(payload["image_size"]))
    if payload.get("logit_scale") is not None:
        model.logit_scale.data.fill_(float(payload["logit_scale"]))
    else:
        model.logit_scale.data.fill_(math.log(1 / 0.07))
    return model.eval()
