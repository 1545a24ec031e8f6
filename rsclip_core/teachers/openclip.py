"""open_clip teachers from local files (never downloaded).

:func:`load_open_clip_teacher` builds any open_clip architecture through
``rsclip_core.models.open_clip_model`` (the same loader ``rsclip export`` and the trainer use) and
loads a **local** checkpoint file in any public layout (plain state dict, open_clip training
checkpoint, OpenAI TorchScript archive, Apple ml-mobileclip, an rsclip run), strictly. Two pitfalls
of a bare file path are handled by naming what the file is (``pretrained_tag``):

* **Preprocessing.** A file does not say which mean/std/interpolation/resize mode its weights were
  trained with (SigLIP: 0.5/0.5, squash; MobileCLIP: 0/1, bilinear). ``pretrained_tag`` is a
  checkpoint entry or entry family of ``rsclip_core.models.pretrained`` (``remoteclip``,
  ``georsclip-vit-h-14``, ``mobileclip2-s0``, ...) or an open_clip pretrained tag (``webli``);
  without it the architecture's defaults are used. ``teacher.preprocess_source`` says which.
* **QuickGELU.** OpenAI-trained CLIP weights (entry ``openai``, tag ``openai``, GeoRSCLIP ViT-B-32,
  SkyCLIP ViT-L-14) need QuickGELU; loading them into GELU runs without error but gives degraded
  embeddings. ``quick_gelu=None`` takes it from the entry / tag, else ``True`` for ``*-quickgelu``
  architectures, else ``False``.

:class:`OpenClipTeacher` wraps the loaded model as a :class:`~rsclip_core.teachers.base.Teacher`
(PIL images / strings -> L2-normalised numpy) for reinforcement and online distillation; its
``info()`` records the teacher's own temperature (``logit_scale``) for the manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from rsclip_core.teachers.base import TeacherError, TeacherInfo, normalize_rows


@dataclass
class LocalOpenClip:
    """An open_clip model with its preprocessing and tokenizer, exposing ``encode_image/encode_text``."""

    arch: str
    checkpoint: Path
    model: Any  # an open_clip CLIP (open_clip ships no type information)
    preprocess: Callable[[Any], torch.Tensor]  # PIL image -> standardised tensor (eval transform)
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    preprocess_cfg: dict[str, Any]
    preprocess_source: str  # "pretrained tag '<tag>'" or "architecture defaults"
    quick_gelu: bool
    pretrained_tag: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.pretrained_tag or self.checkpoint.name}"

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg.get("size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.model.encode_image(images)
        return F.normalize(features, dim=-1) if normalize else features

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.model.encode_text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def to(self, device: str | torch.device) -> LocalOpenClip:
        self.model.to(device)
        return self


def load_open_clip_teacher(
    arch: str,
    checkpoint_path: str | Path,
    *,
    pretrained_tag: str | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
) -> LocalOpenClip:
    """Build open_clip ``arch`` with weights from a local file (never downloads); eval mode.

    ``pretrained_tag``: a checkpoint entry or entry family (``rsclip_core.models.pretrained``:
    ``remoteclip``, ``georsclip-vit-h-14``, ``mobileclip2-s0``, ...) or an open_clip pretrained tag
    (``webli``); it sets preprocessing and QuickGELU (module docstring). The file may be in any
    public layout (``rsclip_core.models.open_clip_model.read_checkpoint_file``) and loads strictly.
    """
    import open_clip

    from rsclip_core.models import CheckpointError, ModelConfigError, image_transform
    from rsclip_core.models.open_clip_model import create_open_clip_model

    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher checkpoint not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    name = f"open_clip:{arch}" + (f"@{pretrained_tag}" if pretrained_tag else "")
    try:
        model = create_open_clip_model(name, path, device, check_tokenizer=False, quick_gelu=quick_gelu)
    except (ModelConfigError, CheckpointError) as exc:
        raise TeacherError(str(exc)) from exc
    entry = model.entry
    if entry is None:
        source = "architecture defaults"
    elif entry.family == entry.name and entry.reference.startswith("open_clip pretrained.py tag"):
        source = f"pretrained tag {pretrained_tag!r}"
    else:
        source = f"checkpoint entry {entry.name!r}"
    pre = model.preprocess
    preprocess_cfg = {"size": int(pre.image_size), "mean": tuple(pre.mean), "std": tuple(pre.std),
                      "interpolation": pre.interpolation, "resize_mode": pre.resize_mode}
    return LocalOpenClip(
        arch=arch,
        checkpoint=path,
        model=model.eval(),
        preprocess=image_transform(pre),
        tokenizer=open_clip.get_tokenizer(arch),
        preprocess_cfg=preprocess_cfg,
        preprocess_source=source,
        quick_gelu=bool(model.config["open_clip"]["quick_gelu"]),
        pretrained_tag=pretrained_tag,
        info=dict(model.source_info),
    )


class OpenClipTeacher:
    """The :class:`~rsclip_core.teachers.base.Teacher` of an open_clip model from a local checkpoint,
    loaded by :func:`load_open_clip_teacher` (never downloads; resolves preprocessing from
    ``pretrained_tag`` and QuickGELU)."""

    def __init__(self, arch: str, checkpoint: str | Path, name: str | None = None,
                 pretrained_tag: str | None = None, batch_size: int = 32) -> None:
        loaded = load_open_clip_teacher(arch, checkpoint, pretrained_tag=pretrained_tag)
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.preprocess = loaded.preprocess
        self.image_size = loaded.image_size
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(self.tokenizer(["a"])).shape[-1])
        self.arch, self.checkpoint, self.pretrained_tag = arch, str(checkpoint), pretrained_tag
        self.preprocess_source = loaded.preprocess_source
        self.name = name or f"openclip-{arch}"
        self.batch_size = batch_size

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([self.preprocess(im) for im in images[i:i + self.batch_size]])
                out.append(self.model.encode_image(x).float().numpy())
        return normalize_rows(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            return normalize_rows(self.model.encode_text(self.tokenizer(list(texts))).float().numpy())

    def info(self) -> TeacherInfo:
        return TeacherInfo(name=self.name, dim=self.dim, kind="open_clip", checkpoint=self.checkpoint,
                           arch=self.arch if not self.pretrained_tag else f"{self.arch}@{self.pretrained_tag}",
                           logit_scale=float(self.model.logit_scale.detach().exp()))
