"""What every teacher is: the protocol, the manifest record, the ensemble and ``--teacher`` specs.

A teacher embeds PIL images and caption strings into L2-normalised float32 vectors. Kinds:

* :class:`~rsclip_core.teachers.offline.OfflineTeacher` — the registered ``teacher-*`` model (packaged
  EfficientNet-Lite + all-MiniLM-L6-v2 towers) with the heads fitted by ``rsclip teacher fit``.
* :class:`~rsclip_core.teachers.openclip.OpenClipTeacher` — any open_clip architecture from a local file.
* :class:`CallableTeacher` — wraps two functions (tests, custom models).

:class:`TeacherEnsemble` runs several teachers and keeps their outputs apart (one array per
teacher, dims recorded in the manifest): MobileCLIP distils from each teacher separately.
Torch-free at import time (numpy only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


class TeacherError(ValueError):
    """A teacher (spec, checkpoint, architecture, tag, ensemble) that cannot be built; the message names it."""


@dataclass
class TeacherInfo:
    """What a reinforced dataset's manifest records about one teacher (enough to rebuild it live)."""

    name: str
    dim: int
    kind: str  # "offline" (fitted heads), "open_clip", "rsclip" (create_model config) or "callable"
    checkpoint: str | None = None
    arch: str | None = None
    logit_scale: float | None = None  # the teacher's own learned temperature (multiplier), the KD default
    dihedral: bool = False  # image targets averaged over the 8 dihedral transforms


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


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class CallableTeacher:
    """A teacher from two functions (tests and custom models)."""

    def __init__(self, name: str, dim: int, encode_images: Callable[[Sequence[Any]], np.ndarray],
                 encode_texts: Callable[[Sequence[str]], np.ndarray], image_size: int = 224) -> None:
        self.name, self.dim, self.image_size = name, dim, image_size
        self._images, self._texts = encode_images, encode_texts

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        return normalize_rows(self._images(images)) if len(images) else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return normalize_rows(self._texts(texts)) if len(texts) else np.zeros((0, self.dim), np.float32)

    def info(self) -> TeacherInfo:
        return TeacherInfo(name=self.name, dim=self.dim, kind="callable")


class TeacherEnsemble:
    """Several teachers; outputs stay per teacher (dict name -> [N, D_t]).

    ``dihedral``: every image embedding is the average over the image's 8 dihedral transforms
    (:mod:`rsclip_core.teachers.dihedral`; rotation-free targets, 8x the image cost).
    """

    def __init__(self, teachers: Sequence[Teacher], dihedral: bool = False) -> None:
        if not teachers:
            raise TeacherError("the teacher ensemble needs at least one teacher")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names):
            raise TeacherError(f"teacher names must be unique, got {names}")
        for n in names:
            if "." in n or "/" in n:
                raise TeacherError(f"teacher name {n!r} must not contain '.' or '/'")
        self.teachers = list(teachers)
        self.dihedral = dihedral

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def encode_images(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        if self.dihedral:
            from rsclip_core.teachers.dihedral import dihedral_average

            return {t.name: dihedral_average(t.encode_images, images) for t in self.teachers}
        return {t.name: t.encode_images(images) for t in self.teachers}

    def encode_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {t.name: t.encode_texts(texts) for t in self.teachers}

    def joint_image(self, images: Sequence[Any]) -> np.ndarray:
        """Concatenated normalised embeddings / sqrt(K): cosine = mean teacher cosine."""
        return np.concatenate([e for e in self.encode_images(images).values()], 1) / np.sqrt(len(self.teachers))

    def joint_text(self, texts: Sequence[str]) -> np.ndarray:
        return np.concatenate([e for e in self.encode_texts(texts).values()], 1) / np.sqrt(len(self.teachers))

    def infos(self) -> list[TeacherInfo]:
        infos = [t.info() for t in self.teachers]
        for info in infos:
            info.dihedral = self.dihedral
        return infos


def load_teacher(spec: str) -> Teacher:
    """Parse a CLI teacher spec.

    * ``offline:/path/teacher.pt`` (or a bare ``.pt`` path) — fitted offline teacher;
    * ``open_clip:ARCH:/path/weights.bin[@ENTRY]`` — open_clip model from a local file in any public
      layout (``@ENTRY``: a checkpoint entry / family such as ``remoteclip`` or ``mobileclip2-s0``, or
      the open_clip pretrained tag the file came from; sets preprocessing and QuickGELU).
    An optional ``NAME=`` prefix sets the teacher's name (``lite2=offline:/x.pt``).
    """
    name = None
    if "=" in spec.split(":", 1)[0]:
        name, spec = spec.split("=", 1)
    kind, _, rest = spec.partition(":")
    from rsclip_core.teachers.offline import OfflineTeacher
    from rsclip_core.teachers.openclip import OpenClipTeacher

    if kind == "offline":
        return OfflineTeacher(rest, name=name)
    if kind == "open_clip":
        arch, _, path = rest.partition(":")
        if not arch or not path:
            raise TeacherError(f"teacher spec {spec!r}: use open_clip:ARCH:/path/to/weights")
        path, _, tag = path.partition("@")
        return OpenClipTeacher(arch, path, name=name, pretrained_tag=tag or None)
    if spec.endswith((".pt", ".pth")):
        return OfflineTeacher(spec, name=name)
    raise TeacherError(f"teacher spec {spec!r}: use offline:/path.pt or open_clip:ARCH:/path")
