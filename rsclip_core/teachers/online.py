"""Teachers for online distillation (mode ``online``): the reinforced dataset's teachers, run live.

The manifest records how each teacher was built (``TeacherInfo.kind/checkpoint/arch``); this rebuilds
them (:class:`~rsclip_core.teachers.offline.OfflineTeacher`, :class:`~rsclip_core.teachers.openclip.OpenClipTeacher`),
or takes explicit ``--teacher`` specs (:func:`~rsclip_core.teachers.base.load_teacher`)
(``offline:/path.pt``, ``open_clip:ARCH:/path[@TAG]``, optionally ``NAME=`` prefixed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rsclip_core.teachers.base import TeacherError

if TYPE_CHECKING:  # pragma: no cover
    from rsclip_core.reinforce.shards import Manifest


class OnlineTeacherError(TeacherError):
    """A teacher of the manifest that cannot be rebuilt for online distillation."""


def load_online_teachers(
    manifest: Manifest, names: Sequence[str], specs: Sequence[str] | None = None
) -> list[Any]:
    """Live teachers named ``names``: from ``specs`` when given, else rebuilt from the manifest."""
    from rsclip_core.teachers.base import load_teacher
    from rsclip_core.teachers.offline import OfflineTeacher
    from rsclip_core.teachers.openclip import OpenClipTeacher

    if specs:
        teachers = [load_teacher(spec) for spec in specs]
        by_name = {t.name: t for t in teachers}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise OnlineTeacherError(f"--online-teacher: no spec for teachers {missing} (got {sorted(by_name)})")
        return [by_name[n] for n in names]
    infos = {t.name: t for t in manifest.teachers}
    teachers = []
    for name in names:
        info = infos[name]
        if not info.checkpoint:
            raise OnlineTeacherError(f"teacher {name!r}: the manifest records no checkpoint; pass --online-teacher")
        if info.kind == "offline":
            teachers.append(OfflineTeacher(info.checkpoint, name=name))
        elif info.kind == "open_clip" and info.arch:
            arch, _, tag = info.arch.partition("@")
            teachers.append(OpenClipTeacher(arch, info.checkpoint, name=name, pretrained_tag=tag or None))
        else:
            raise OnlineTeacherError(
                f"teacher {name!r}: cannot rebuild kind {info.kind!r} live; pass --online-teacher NAME=SPEC"
            )
    return teachers
