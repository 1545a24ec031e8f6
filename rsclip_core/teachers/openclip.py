"""open_clip teachers from local files (never downloaded).

:func:`load_open_clip_teacher` builds any open_clip architecture and loads a **local**
checkpoint file. Two pitfalls of ``open_clip.create_model_and_transforms(arch, pretrained=<file>)``
are handled here:

* **Preprocessing.** Given a file path instead of a tag, open_clip cannot know which pretrained
  entry the weights came from and silently uses the architecture's default mean/std (OpenAI's
  for most), e.g. wrong for SigLIP (0.5/0.5, squash) or MobileCLIP (0/1, bilinear) weights. Pass
  ``pretrained_tag`` (the open_clip tag the file was downloaded as, e.g. ``"webli"``) and its
  mean/std/interpolation/resize mode are looked up in open_clip's pretrained table and forced;
  without a tag the architecture's defaults are used. ``teacher.preprocess_source`` says which.
* **QuickGELU.** OpenAI-trained CLIP weights (tag ``openai``, and some early LAION/YFCC ones)
  were trained with QuickGELU; open_clip's plain configs (``ViT-B-32``) use GELU, and loading
  those weights into GELU runs without error but gives degraded embeddings. ``quick_gelu=None``
  resolves it: the tag's ``quick_gelu`` flag, else ``True`` for ``*-quickgelu`` architectures,
  else ``False``. Pass ``quick_gelu=True`` explicitly for OpenAI weights given without a tag.

OpenAI's original TorchScript ``.pt`` archives cannot be read with ``weights_only=True``;
convert them to a state dict once (``torch.save(model.state_dict(), path)``).

:class:`OpenClipTeacher` wraps the loaded model as a :class:`~rsclip_core.teachers.base.Teacher`
(PIL images / strings -> L2-normalised numpy) for reinforcement and online distillation.
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


def resolve_open_clip_settings(
    arch: str, pretrained_tag: str | None = None, quick_gelu: bool | None = None
) -> tuple[dict[str, Any], str, bool]:
    """(forced preprocess kwargs, where they came from, quick_gelu) for ``arch`` + optional tag."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    arch_cfg = open_clip.get_model_config(arch)
    if arch_cfg is None:
        raise TeacherError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    arch_quick_gelu = bool(arch_cfg.get("quick_gelu", False)) or arch.endswith("-quickgelu")
    if pretrained_tag:
        tag_cfg = get_pretrained_cfg(arch, pretrained_tag)
        if not tag_cfg:
            tags = list_pretrained_tags_by_model(arch)
            raise TeacherError(f"open_clip has no pretrained tag {pretrained_tag!r} for {arch!r}; known tags: {tags}")
        forced = {
            "image_mean": tuple(tag_cfg["mean"]),
            "image_std": tuple(tag_cfg["std"]),
            "image_interpolation": tag_cfg.get("interpolation"),
            "image_resize_mode": tag_cfg.get("resize_mode"),
        }
        source = f"pretrained tag {pretrained_tag!r}"
        tag_quick_gelu = tag_cfg.get("quick_gelu")
        resolved = quick_gelu if quick_gelu is not None else bool(tag_quick_gelu) or arch_quick_gelu
    else:
        forced = {}
        source = "architecture defaults"
        resolved = quick_gelu if quick_gelu is not None else arch_quick_gelu
    return {k: v for k, v in forced.items() if v is not None}, source, resolved


def load_open_clip_teacher(
    arch: str,
    checkpoint_path: str | Path,
    *,
    pretrained_tag: str | None = None,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
) -> LocalOpenClip:
    """Build open_clip ``arch`` with weights from a local file (never downloads); eval mode.

    See the module docstring for how ``pretrained_tag`` (preprocessing) and ``quick_gelu`` resolve.
    """
    import open_clip

    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher checkpoint not found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    forced, source, resolved_quick_gelu = resolve_open_clip_settings(arch, pretrained_tag, quick_gelu)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(path), force_quick_gelu=resolved_quick_gelu, weights_only=True, device=device, **forced
        )
    except RuntimeError as exc:
        if "size mismatch" in str(exc) or "Missing key" in str(exc) or "Unexpected key" in str(exc):
            raise TeacherError(f"{path}: not a checkpoint of open_clip {arch!r}: {str(exc).splitlines()[0]}") from exc
        raise
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return LocalOpenClip(
        arch=arch,
        checkpoint=path,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        preprocess_cfg=preprocess_cfg,
        preprocess_source=source,
        quick_gelu=resolved_quick_gelu,
        pretrained_tag=pretrained_tag,
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
