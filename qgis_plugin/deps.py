"""Runtime dependencies of the plugin: detection and a guarded install into a plugin-local folder.

QGIS ships its own Python with its own numpy (1.24 on Debian 12's QGIS 3.22). The classic failure
of ML plugins is a ``pip install`` that upgrades numpy under QGIS and breaks GDAL, pandas and
QGIS's own processing. This module never does that:

1. it resolves the missing requirements with ``pip install --dry-run --report`` *against the
   Python QGIS runs*, with a constraints file pinning numpy (and any other package named in
   ``PINNED``) to the version already installed, so the resolver must pick wheels that work with
   it (binary wheels only, nothing is compiled);
2. it refuses if the plan would still touch a pinned package;
3. it installs exactly the planned pins with ``--no-deps --target <plugin-local dir>``, so nothing
   in QGIS's own site-packages is modified, and the folder can simply be deleted to undo it.

Importable without QGIS: ``scripts/setup_qgis.sh`` runs it as ``python3 -m qgis_plugin.deps``
so CI exercises the same code path a user triggers from the dock.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

DEPS_DIR_ENV = "RSCLIP_QGIS_DEPS_DIR"
# Packages QGIS's Python already provides (built against QGIS's own numpy / PROJ / GDAL): when
# installed there, they are pinned to that version and never shadowed by the plugin folder.
PINNED = ("numpy", "pyproj", "GDAL")
# Versions known to break inside QGIS, excluded from every plan: (name, first bad version, why).
KNOWN_BAD = (("pyproj", "3.7", "pyproj 3.7 segfaults when a second QGIS task thread creates a CRS"),)


def host_geos_version() -> Optional[tuple]:
    """Version of the system GEOS C library (the one QGIS links), or None if there is none."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("geos_c")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.GEOSversion.restype = ctypes.c_char_p
        return _version_tuple(lib.GEOSversion().decode().split("-")[0])
    except (OSError, AttributeError):
        return None


def excluded_versions() -> List[tuple]:
    """(name, first bad version, why) for this machine: `KNOWN_BAD` plus host-library limits.

    On Linux the QGIS binary loads its GEOS globally, so a shapely wheel's calls resolve to the
    host's GEOS instead of the one bundled in the wheel: shapely must not need a newer GEOS API
    than the host has (shapely 2.1 asks GEOS >= 3.12 for 4-D WKB and fails on Debian 12's 3.11:
    "WKB output dimension must be 2 or 3").
    """
    excluded = list(KNOWN_BAD)
    if sys.platform.startswith("linux"):
        geos = host_geos_version()
        if geos is not None and geos < (3, 12):
            excluded.append(("shapely", "2.1", f"shapely 2.1 needs GEOS >= 3.12; QGIS's GEOS is {geos}"))
    return excluded


class DependencyInstallError(RuntimeError):
    """The guarded install could not run or was refused (message says why)."""


@dataclass(frozen=True)
class Requirement:
    """One runtime dependency: distribution name, import name and minimum version."""

    dist: str
    module: str
    minimum: str

    @property
    def spec(self) -> str:
        return f"{self.dist}>={self.minimum}"


# What rsclip_core.inference needs (see pyproject.toml's base dependencies).
REQUIREMENTS: tuple = (
    Requirement("onnxruntime", "onnxruntime", "1.16"),
    Requirement("tokenizers", "tokenizers", "0.15"),
    Requirement("rasterio", "rasterio", "1.3"),
    Requirement("shapely", "shapely", "2.0"),
    Requirement("geopandas", "geopandas", "0.14"),
    Requirement("pyogrio", "pyogrio", "0.7"),
    Requirement("PyYAML", "yaml", "6.0"),
)


def _version_tuple(version: str) -> tuple:
    parts = []
    for piece in re.split(r"[.+-]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def default_deps_dir() -> Path:
    """The plugin-local folder extra packages go to (one per Python minor version).

    ``$RSCLIP_QGIS_DEPS_DIR`` overrides it (CI, shared installs).
    """
    override = os.environ.get(DEPS_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return Path(__file__).resolve().parent / "deps" / tag


def activate(deps_dir: Optional[Path] = None) -> Path:
    """Put the plugin-local dependency folder first on ``sys.path`` (idempotent)."""
    folder = Path(deps_dir) if deps_dir is not None else default_deps_dir()
    entry = str(folder)
    if folder.is_dir() and entry not in sys.path:
        sys.path.insert(0, entry)
        importlib.invalidate_caches()
    return folder


def installed_version(dist: str) -> Optional[str]:
    """Version of an installed distribution as the current ``sys.path`` sees it, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Iterable[Requirement] = REQUIREMENTS) -> List[Requirement]:
    """Requirements that are absent or older than their minimum version."""
    missing = []
    for req in requirements:
        version = installed_version(req.dist)
        if version is None or _version_tuple(version) < _version_tuple(req.minimum):
            missing.append(req)
            continue
        try:
            importlib.util.find_spec(req.module)
        except (ImportError, ValueError):
            missing.append(req)
    return missing


def python_executable() -> str:
    """The Python interpreter QGIS embeds (``sys.executable`` is the QGIS binary on some platforms)."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python") and exe.exists():
        return str(exe)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [
        Path(sys.exec_prefix) / "bin" / f"python{version}",
        Path(sys.exec_prefix) / "bin" / "python3",
        Path(sys.exec_prefix) / "python.exe",
        Path(sys.exec_prefix) / "python3.exe",
        Path(sys.base_exec_prefix) / "bin" / f"python{version}",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which(f"python{version}") or shutil.which("python3")
    if found:
        return found
    raise DependencyInstallError("cannot find the Python interpreter QGIS uses (needed to run pip)")


def _pip_env(deps_dir: Path) -> dict:
    env = dict(os.environ)
    # The dry run must see what is already in the plugin-local folder, or it would plan it again.
    env["PYTHONPATH"] = os.pathsep.join(
        [str(deps_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    return env


def _run_pip(args: Sequence[str], deps_dir: Path, log: Callable[[str], None]) -> str:
    command = [python_executable(), "-m", "pip", *args]
    log("$ " + " ".join(command))
    try:
        proc = subprocess.run(command, env=_pip_env(deps_dir), capture_output=True, text=True)
    except OSError as exc:
        raise DependencyInstallError(f"cannot run pip: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise DependencyInstallError(f"pip failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dists_in(paths: Sequence[str]) -> dict:
    """{normalised name: (version, dist)} of the distributions on ``paths`` (first one wins)."""
    found: dict = {}
    for dist in importlib.metadata.distributions(path=list(paths)):
        name = _norm(dist.metadata["Name"] or "")
        if name and name not in found:
            found[name] = (dist.version, dist)
    return found


def system_version(name: str, deps_dir: Optional[Path] = None) -> Optional[str]:
    """Version of ``name`` installed in QGIS's own Python, ignoring the plugin folder."""
    folder = str(Path(deps_dir) if deps_dir is not None else default_deps_dir())
    paths = [p for p in sys.path if p and os.path.abspath(p) != os.path.abspath(folder)]
    entry = _dists_in(paths).get(_norm(name))
    return entry[0] if entry else None


def pinned_constraints(deps_dir: Optional[Path] = None) -> List[str]:
    """Constraints for every plan: pinned system packages at their version, known-bad versions excluded."""
    lines = []
    pinned = set()
    for name in PINNED:
        version = system_version(name, deps_dir)
        if version is not None:
            lines.append(f"{name}=={version}")
            pinned.add(_norm(name))
    for name, bad_from, _why in excluded_versions():
        if _norm(name) not in pinned:
            lines.append(f"{name}<{bad_from}")
    return lines


def folder_conflicts(deps_dir: Optional[Path] = None) -> List[str]:
    """Distributions in the plugin folder that must go: shadowing a pinned system package, or known bad."""
    folder = Path(deps_dir) if deps_dir is not None else default_deps_dir()
    if not folder.is_dir():
        return []
    inside = _dists_in([str(folder)])
    bad = []
    for name in PINNED:
        if _norm(name) in inside and system_version(name, folder) is not None:
            bad.append(name)
    for name, bad_from, _why in excluded_versions():
        entry = inside.get(_norm(name))
        if entry and _version_tuple(entry[0]) >= _version_tuple(bad_from) and name not in bad:
            bad.append(name)
    return bad


def remove_from_folder(name: str, deps_dir: Path) -> None:
    """Uninstall one distribution from the plugin folder (files listed in its RECORD)."""
    entry = _dists_in([str(deps_dir)]).get(_norm(name))
    if entry is None:
        return
    dist = entry[1]
    base = Path(str(dist.locate_file(""))).resolve()
    for file in dist.files or []:
        path = Path(str(dist.locate_file(file))).resolve()
        if base in path.parents and path.is_file():
            path.unlink()
    for folder in sorted({p for p in base.iterdir() if p.is_dir()}, reverse=True):
        if not any(f.is_file() for f in folder.rglob("*")):
            shutil.rmtree(folder, ignore_errors=True)


def plan_install(
    specs: Sequence[str], deps_dir: Path, log: Callable[[str], None] = lambda _m: None
) -> List[str]:
    """Resolve ``specs`` against QGIS's Python without installing: the exact ``name==version`` pins to add.

    Raises DependencyInstallError if the plan would replace a pinned package (numpy).
    """
    with tempfile.TemporaryDirectory(prefix="rsclip-pip-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pinned_constraints(deps_dir)) + "\n")
        report = Path(tmp) / "report.json"
        _run_pip(
            [
                "install",
                "--dry-run",
                "--quiet",
                "--only-binary=:all:",
                "--report",
                str(report),
                "-c",
                str(constraints),
                *specs,
            ],
            deps_dir,
            log,
        )
        planned = json.loads(report.read_text()).get("install", [])
    pins = []
    for item in planned:
        name = item["metadata"]["name"]
        version = item["metadata"]["version"]
        if _norm(name) in {_norm(p) for p in PINNED} and system_version(name, deps_dir) is not None:
            raise DependencyInstallError(
                f"refusing to install {name} {version}: it would shadow the {name} QGIS ships "
                f"({system_version(name, deps_dir)})"
            )
        pins.append(f"{name}=={version}")
    return pins


def install(
    specs: Sequence[str],
    deps_dir: Optional[Path] = None,
    log: Callable[[str], None] = lambda _m: None,
) -> List[str]:
    """Install ``specs`` (pip requirement strings) into the plugin-local folder; returns the pins."""
    folder = Path(deps_dir) if deps_dir is not None else default_deps_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in folder_conflicts(folder):
        log(f"removing {name} from {folder} (shadows QGIS's own or is a known-bad version)")
        remove_from_folder(name, folder)
    pins = plan_install(specs, folder, log)
    if not pins:
        log("nothing to install: every requirement is already satisfied")
        return []
    present = _dists_in([str(folder)])
    for pin in pins:  # pip --target leaves an older version's .dist-info behind: remove it first
        name = pin.split("==")[0]
        if _norm(name) in present:
            remove_from_folder(name, folder)
    log("installing into " + str(folder) + ": " + ", ".join(pins))
    _run_pip(
        [
            "install",
            "--no-deps",
            "--only-binary=:all:",
            "--upgrade",
            "--no-warn-script-location",
            "--target",
            str(folder),
            *pins,
        ],
        folder,
        log,
    )
    activate(folder)
    return pins


def ensure(
    requirements: Iterable[Requirement] = REQUIREMENTS,
    deps_dir: Optional[Path] = None,
    log: Callable[[str], None] = lambda _m: None,
) -> List[str]:
    """Activate the folder, then install whatever is still missing; returns the pins installed."""
    folder = activate(deps_dir)
    todo = missing_requirements(requirements)
    if not todo and not folder_conflicts(folder):
        return []
    return install([req.spec for req in todo], folder, log)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python3 -m qgis_plugin.deps``: check or install the plugin's dependencies for this Python."""
    parser = argparse.ArgumentParser(prog="python3 -m qgis_plugin.deps", description=main.__doc__)
    parser.add_argument(
        "--target", type=Path, default=None, help="folder to install into (default: plugin-local)"
    )
    parser.add_argument(
        "--check", action="store_true", help="only report what is missing (exit 1 if anything)"
    )
    parser.add_argument(
        "--extra-only", action="store_true", help="install only the extra specs (e.g. test tools)"
    )
    parser.add_argument("extra", nargs="*", help="additional requirement specs to install (e.g. test tools)")
    args = parser.parse_args(argv)
    folder = activate(args.target)
    todo = [] if args.extra_only else missing_requirements()
    conflicts = [] if args.extra_only else folder_conflicts(folder)
    if args.check:
        for req in todo:
            print(f"missing: {req.spec} (found {installed_version(req.dist) or 'none'})")
        for name in conflicts:
            print(f"to replace: {name} in {folder}")
        return 1 if todo or conflicts else 0
    specs = [req.spec for req in todo] + list(args.extra)
    if conflicts and not todo:  # re-resolve what depended on the removed packages
        specs += [req.spec for req in REQUIREMENTS]
    if not specs:
        print(f"rsclip plugin dependencies satisfied ({folder})")
        return 0
    try:
        pins = install(specs, folder, log=print)
    except DependencyInstallError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    print(f"installed {len(pins)} packages into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
