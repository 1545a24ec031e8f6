"""Where long-running stages (teacher features, reinforced shards, training runs) keep their work files.

One place decides it: an explicit path wins, else ``$RSCLIP_WORK_DIR``, else ``~/.cache/rsclip``.
Every stage writes below ``work_dir() / <stage>`` and resumes from what it finds there, so the work dir
may be wiped between sessions without losing anything but time. Work files are written with
:func:`atomic_write_bytes`, so a killed stage never leaves a half-written file. Torch-free (stdlib only).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

WORK_DIR_ENV = "RSCLIP_WORK_DIR"
DEFAULT_WORK_DIR = Path("~/.cache/rsclip")


def work_dir(override: str | os.PathLike | None = None) -> Path:
    """The work-file root: ``override`` if given, else ``$RSCLIP_WORK_DIR``, else ``~/.cache/rsclip``."""
    chosen = override if override not in (None, "") else os.environ.get(WORK_DIR_ENV) or DEFAULT_WORK_DIR
    return Path(chosen).expanduser()


def stage_dir(stage: str, override: str | os.PathLike | None = None) -> Path:
    """The folder of one stage (``teacher_features``, ``teachers``, ``reinforced``, ``runs`` ...)."""
    return work_dir(override) / stage


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path`` (its folder created) to write; renamed onto ``path`` when the
    block succeeds, removed when it raises, so ``path`` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via :func:`atomic_target`, fsynced before the rename."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))
