"""Runtime dependencies of the plugin: detection and a guarded install into the profile's data folder.

QGIS ships its own Python with its own numpy (1.24 on Debian 12's QGIS 3.22). The classic failure
of ML plugins is a ``pip install`` that upgrades numpy under QGIS and breaks GDAL, pandas and
QGIS's own processing. This module never does that:

1. it finds the interpreter QGIS itself runs (not a pyenv/conda shim first on ``PATH``) and checks
   that ``import qgis`` works in it;
2. it resolves the missing requirements with ``pip install --dry-run --report`` against that
   Python, with a constraints file pinning numpy (and any other package named in ``PINNED``) to
   the version already installed, so the resolver must pick wheels that work with it (binary
   wheels only, nothing is compiled). It first also pins *every* package QGIS's Python already
   has (``idna``, ``click``...), so nothing already there is duplicated when compatible versions
   exist;
3. it refuses if the plan would still touch a pinned package;
4. it installs exactly the planned pins with ``--no-deps --target`` into a folder in the QGIS
   profile (``<profile>/rsclip/deps/py3XX``): outside the plugin folder, so reinstalling or
   updating the plugin from its zip keeps it; nothing in QGIS's own site-packages is modified.

The folder is *appended* to ``sys.path``: QGIS's own packages always win, so the plugin's folder
cannot shadow Debian's ``idna`` or ``click`` for the rest of QGIS. Only distributions the
resolver had to take newer than the system's (recorded in the folder) are looked up in the
folder first, by a finder limited to their top-level modules.

Offline (or behind a proxy) pip cannot download anything: a folder of wheels
(``$RSCLIP_QGIS_WHEELS`` or the ``rsclip/wheel_folder`` QGIS setting) makes the install use
``pip --no-index --find-links <folder>``, and failures say which Debian packages or wheels to get.

Importable without QGIS: ``scripts/setup_qgis.sh`` runs it as ``python3 -m qgis_plugin.deps``
so CI exercises the same code path a user triggers from the dock.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

DEPS_DIR_ENV = "RSCLIP_QGIS_DEPS_DIR"
WHEELS_ENV = "RSCLIP_QGIS_WHEELS"
WHEELS_SETTING = "rsclip/wheel_folder"  # QgsSettings key of the wheel folder chosen in the dock
OVERRIDES_FILE = "rsclip-overrides.txt"  # top-level modules the folder must provide first
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


def qgis_profile_dir() -> Path:
    """The active QGIS profile folder (``QgsApplication.qgisSettingsDirPath()``), else the default profile's."""
    try:
        from qgis.core import QgsApplication

        if QgsApplication.instance() is not None and QgsApplication.qgisSettingsDirPath():
            return Path(QgsApplication.qgisSettingsDirPath())
    except ImportError:
        pass
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "QGIS" / "QGIS3"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support" / "QGIS" / "QGIS3"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "QGIS" / "QGIS3"
    return base / "profiles" / "default"


def default_deps_dir() -> Path:
    """Where extra packages go: ``<QGIS profile>/rsclip/deps/py3XX`` (outside the plugin folder).

    Plugin updates from the zip replace the plugin folder only, so the packages survive them.
    ``$RSCLIP_QGIS_DEPS_DIR`` overrides it (CI, shared installs).
    """
    override = os.environ.get(DEPS_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    return qgis_profile_dir() / "rsclip" / "deps" / tag


class _FolderFirst(importlib.abc.MetaPathFinder):
    """Finds a fixed set of top-level modules in the plugin folder before QGIS's site-packages."""

    def __init__(self, folder: Path, names: Iterable[str]) -> None:
        self.folder = str(folder)
        self.names = set(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:  # noqa: D102
        if path is None and name in self.names:
            return importlib.machinery.PathFinder.find_spec(name, [self.folder])
        return None


def folder_overrides(deps_dir: Path) -> List[str]:
    """Top-level modules the folder must provide first (recorded by `install`; usually none)."""
    path = Path(deps_dir) / OVERRIDES_FILE
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def activate(deps_dir: Optional[Path] = None) -> Path:
    """Append the dependency folder to ``sys.path`` (idempotent): QGIS's own packages keep priority.

    Modules listed in the folder's overrides file (a package the resolver needed newer than the
    system's, e.g. shapely 2 over Debian 12's 1.8) are found in the folder first.
    """
    folder = Path(deps_dir) if deps_dir is not None else default_deps_dir()
    entry = str(folder)
    if not folder.is_dir():
        return folder
    if entry not in sys.path:
        sys.path.append(entry)
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _FolderFirst) and f.folder == entry)]
    overrides = folder_overrides(folder)
    if overrides:
        sys.meta_path.insert(0, _FolderFirst(folder, overrides))
    importlib.invalidate_caches()
    return folder


def installed_version(dist: str) -> Optional[str]:
    """Version of an installed distribution as the plugin sees it (folder overrides first), or None."""
    folder = default_deps_dir()
    overrides = set(folder_overrides(folder)) if folder.is_dir() else set()
    if overrides:
        entry = _dists_in([str(folder)]).get(_norm(dist))
        if entry is not None and overrides & set(_top_level_modules(entry[1])):
            return entry[0]
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


# Where each dependency comes from without PyPI: Debian/Ubuntu packages (None = no usable one in
# Debian 12; a wheel folder is the way then).
APT_PACKAGES: Dict[str, Optional[str]] = {
    "onnxruntime": None,
    "tokenizers": None,
    "rasterio": "python3-rasterio",
    "shapely": "python3-shapely (>= 2.0: Debian 13 / Ubuntu 24.04)",
    "geopandas": "python3-geopandas (>= 0.14: Debian 13 / Ubuntu 24.04)",
    "pyogrio": None,
    "PyYAML": "python3-yaml",
}
_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|ProxyError|ConnectTimeout|Read timed out|SSLError",
    re.IGNORECASE,
)
_OFFLINE = re.compile(_NETWORK.pattern + r"|No matching distribution found|Could not find a version", re.IGNORECASE)
_INTERPRETER: Dict[str, str] = {}


def _interpreter_candidates() -> List[str]:
    """Possible paths of the Python QGIS runs, most direct first (duplicates removed)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    names = [f"python{version}", f"python{sys.version_info[0]}", "python"]
    found = [sys.executable, getattr(sys, "_base_executable", "") or ""]
    if sys.platform.startswith("linux"):
        found.append(os.path.realpath("/proc/self/exe"))  # the process itself (python3.X under pytest)
    for prefix in dict.fromkeys((sys.base_exec_prefix, sys.exec_prefix, sys.base_prefix, sys.prefix)):
        found += [str(Path(prefix) / "bin" / name) for name in names]
        found += [str(Path(prefix) / "python.exe"), str(Path(prefix) / "python3.exe")]
    found += [shutil.which(name) or "" for name in names]
    out: List[str] = []
    for path in found:
        # Only Python binaries: sys.executable / /proc/self/exe may be the QGIS binary itself.
        if path and Path(path).name.lower().startswith("python") and Path(path).is_file() and path not in out:
            out.append(path)
    return out


def _runs_qgis_python(path: str) -> bool:
    """True if ``path`` is a Python of this version in which ``import qgis`` works."""
    probe = "import sys, qgis; print('%d.%d' % sys.version_info[:2])"
    try:
        proc = subprocess.run([path, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return proc.returncode == 0 and proc.stdout.strip().endswith(want)


def python_executable() -> str:
    """The Python interpreter QGIS itself runs, checked by importing ``qgis`` in it.

    ``sys.executable`` can be the QGIS binary, or a pyenv/conda shim first on ``PATH`` whose
    packages (numpy 2.x...) are not QGIS's: candidates come from ``sys._base_executable``,
    ``/proc/self/exe`` and the interpreter prefixes before ``PATH``, and the first one that
    imports ``qgis`` at this Python version wins.
    """
    key = os.environ.get("PATH", "") + "|" + sys.executable
    if key in _INTERPRETER:
        return _INTERPRETER[key]
    tried = _interpreter_candidates()
    for path in tried:
        if _runs_qgis_python(path):
            _INTERPRETER[key] = path
            return path
    raise DependencyInstallError(
        "cannot find the Python interpreter QGIS runs (needed to run pip): none of "
        + (", ".join(tried) or "no python found")
        + f" imports qgis at Python {sys.version_info[0]}.{sys.version_info[1]}"
    )


def wheel_folder() -> Optional[Path]:
    """The folder of wheels to install from offline: ``$RSCLIP_QGIS_WHEELS``, else the QGIS setting."""
    value = os.environ.get(WHEELS_ENV, "")
    if not value:
        try:
            from qgis.core import QgsApplication, QgsSettings

            if QgsApplication.instance() is not None:
                value = str(QgsSettings().value(WHEELS_SETTING, "") or "")
        except ImportError:
            pass
    return Path(value).expanduser() if value else None


def _index_args() -> List[str]:
    folder = wheel_folder()
    if folder is None:
        return []
    if not folder.is_dir():
        raise DependencyInstallError(f"wheel folder {folder} ({WHEELS_ENV}): no such folder")
    return ["--no-index", "--find-links", str(folder)]


def offline_advice(specs: Sequence[str]) -> str:
    """What to do when pip cannot reach PyPI: Debian packages, or a folder of wheels."""
    names = [re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0] for spec in specs]
    apt = [APT_PACKAGES[n] for n in names if APT_PACKAGES.get(n)]
    wheels_only = [n for n in names if n in APT_PACKAGES and not APT_PACKAGES[n]]
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    lines = ["pip could not download the packages (offline, or a proxy blocks PyPI). What to do:"]
    if apt:
        notes = "; ".join(a for a in apt if " " in a)
        lines.append("- on Debian/Ubuntu: sudo apt install " + " ".join(a.split(" ")[0] for a in apt)
                     + (f"  (note: {notes})" if notes else ""))
    lines.append(
        ("- or" if apt else "-") + " install from a folder of wheels"
        + (f" (the only way for {', '.join(wheels_only)})" if wheels_only and apt else "")
        + f": on a connected machine run  pip download --only-binary=:all: --python-version {version} "
        + "-d wheels " + " ".join(shlex.quote(spec) for spec in specs)
        + "  then copy the folder here and pick it with 'From wheels…' in the rsclip dock "
        + f"(or set {WHEELS_ENV})."
    )
    return "\n".join(lines)


def _pip_env(deps_dir: Path) -> dict:
    env = dict(os.environ)
    # The dry run must see what is already in the plugin's folder, or it would plan it again.
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(deps_dir)]
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
        output = (proc.stderr or proc.stdout).strip()
        tail = "\n".join(output.splitlines()[-15:])
        message = f"pip failed (exit {proc.returncode}):\n{tail}"
        if _OFFLINE.search(output):
            specs = [a for a in args if not a.startswith("-") and os.path.sep not in a and a != "install"]
            message += "\n\n" + offline_advice(specs)
        raise DependencyInstallError(message)
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


_PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$", re.IGNORECASE)


def system_constraints(deps_dir: Optional[Path] = None) -> List[str]:
    """``name==version`` of every distribution QGIS's Python already has (outside the plugin folder).

    Used as *preferred* constraints: the first plan keeps QGIS's own ``idna``, ``click``...
    so the folder only adds what is missing.
    """
    folder = str(Path(deps_dir) if deps_dir is not None else default_deps_dir())
    paths = [p for p in sys.path if p and os.path.abspath(p) != os.path.abspath(folder)]
    lines = []
    for name, (version, _dist) in sorted(_dists_in(paths).items()):
        if _PEP440.match(version or ""):
            lines.append(f"{name}=={version}")
    return lines


def _resolve(specs: Sequence[str], constraints: List[str], deps_dir: Path, log: Callable[[str], None]) -> list:
    with tempfile.TemporaryDirectory(prefix="rsclip-pip-") as tmp:
        constraints_file = Path(tmp) / "constraints.txt"
        constraints_file.write_text("\n".join(constraints) + "\n")
        report = Path(tmp) / "report.json"
        _run_pip(
            [
                "install",
                "--dry-run",
                "--quiet",
                "--only-binary=:all:",
                *_index_args(),
                "--report",
                str(report),
                "-c",
                str(constraints_file),
                *specs,
            ],
            deps_dir,
            log,
        )
        return json.loads(report.read_text()).get("install", [])


def plan_install(
    specs: Sequence[str], deps_dir: Path, log: Callable[[str], None] = lambda _m: None
) -> List[str]:
    """Resolve ``specs`` against QGIS's Python without installing: the exact ``name==version`` pins to add.

    First with every package QGIS's Python has pinned (nothing already there is duplicated);
    if that cannot be resolved, with only `PINNED` and the known-bad exclusions.
    Raises DependencyInstallError if the plan would replace a pinned package (numpy).
    """
    hard = pinned_constraints(deps_dir)
    hard_names = {_norm(line.split("=")[0].split("<")[0]) for line in hard}
    soft = [line for line in system_constraints(deps_dir) if _norm(line.split("==")[0]) not in hard_names]
    try:
        planned = _resolve(specs, hard + soft, deps_dir, log)
    except DependencyInstallError as exc:
        if _NETWORK.search(str(exc)):
            raise
        log("no plan keeps every package QGIS's Python has; resolving with only numpy/pyproj/GDAL pinned")
        planned = _resolve(specs, hard, deps_dir, log)
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


def _top_level_modules(dist: Any) -> List[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    names = []
    for file in dist.files or []:
        first = Path(str(file)).parts[0]
        if first.endswith((".dist-info", ".data")) or first in ("..", "bin", "__pycache__"):
            continue
        name = first[:-3] if first.endswith(".py") else first
        if name.isidentifier() and name not in names:
            names.append(name)
    return names


def record_overrides(deps_dir: Path) -> List[str]:
    """Write the folder's overrides file: modules of folder packages that QGIS's Python also has."""
    folder = Path(deps_dir)
    inside = _dists_in([str(folder)])
    paths = [p for p in sys.path if p and os.path.abspath(p) != os.path.abspath(str(folder))]
    system = _dists_in(paths)
    names: List[str] = []
    for name, (_version, dist) in sorted(inside.items()):
        if name in system:
            names += [m for m in _top_level_modules(dist) if m not in names]
    (folder / OVERRIDES_FILE).write_text("".join(f"{n}\n" for n in names))
    return names


def install(
    specs: Sequence[str],
    deps_dir: Optional[Path] = None,
    log: Callable[[str], None] = lambda _m: None,
) -> List[str]:
    """Install ``specs`` (pip requirement strings) into the dependency folder; returns the pins."""
    folder = Path(deps_dir) if deps_dir is not None else default_deps_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in folder_conflicts(folder):
        log(f"removing {name} from {folder} (shadows QGIS's own or is a known-bad version)")
        remove_from_folder(name, folder)
    pins = plan_install(specs, folder, log)
    if not pins:
        log("nothing to install: every requirement is already satisfied")
        record_overrides(folder)
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
            *_index_args(),
            "--upgrade",
            "--no-warn-script-location",
            "--target",
            str(folder),
            *pins,
        ],
        folder,
        log,
    )
    overrides = record_overrides(folder)
    if overrides:
        log("taken from the plugin folder before QGIS's own (newer versions needed): " + ", ".join(overrides))
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
