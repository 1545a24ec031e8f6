"""The installer in the cases that broke it: a pyenv/conda shim first on PATH, no network (wheel
folder), plugin updates (folder outside the plugin) and QGIS's own packages (not shadowed)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import sys
import zipfile
from pathlib import Path

import pytest

from qgis_plugin import PLUGIN_DIR, deps

REAL_PYTHON = os.path.realpath("/proc/self/exe")


def _shim(folder: Path) -> Path:
    """A pyenv-like shim: a python3 that is not QGIS's (here: the same binary without site-packages)."""
    folder.mkdir(parents=True, exist_ok=True)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for name in ("python3", version, "python"):
        path = folder / name
        path.write_text(f'#!/bin/sh\nexec {REAL_PYTHON} -I -S "$@"\n')
        path.chmod(0o755)
    return folder / "python3"


def test_a_shim_first_on_path_is_not_used_for_pip(tmp_path, monkeypatch):
    shim = _shim(tmp_path / "shims")
    monkeypatch.setenv("PATH", f"{shim.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sys, "executable", str(shim))
    monkeypatch.setattr(sys, "_base_executable", str(shim), raising=False)
    deps._INTERPRETER.clear()
    assert not deps._runs_qgis_python(str(shim))  # the shim's Python cannot import qgis
    exe = deps.python_executable()
    assert not exe.startswith(str(shim.parent)) and deps._runs_qgis_python(exe)
    assert os.path.realpath(exe) == REAL_PYTHON
    deps._INTERPRETER.clear()


def test_no_interpreter_with_qgis_is_a_clear_error(tmp_path, monkeypatch):
    shim = _shim(tmp_path / "shims")
    monkeypatch.setattr(deps, "_interpreter_candidates", lambda: [str(shim)])
    deps._INTERPRETER.clear()
    with pytest.raises(deps.DependencyInstallError, match="imports qgis"):
        deps.python_executable()
    deps._INTERPRETER.clear()


def _write_wheel(folder: Path, name: str = "rsclip_wheel_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (what 'pip download' would have fetched on a connected machine)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: rsclip-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_install_from_a_wheel_folder_without_an_index(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    _write_wheel(wheels)
    monkeypatch.setenv(deps.WHEELS_ENV, str(wheels))
    folder = tmp_path / "deps"
    logs = []
    pins = deps.install(["rsclip-wheel-probe>=1.0"], folder, log=logs.append)
    assert [p.lower().replace("_", "-") for p in pins] == ["rsclip-wheel-probe==1.0"]
    assert all("--no-index" in line and f"--find-links {wheels}" in line for line in logs if line.startswith("$"))
    import rsclip_wheel_probe

    assert rsclip_wheel_probe.VALUE == 42 and rsclip_wheel_probe.__file__.startswith(str(folder))
    sys.path.remove(str(folder))
    sys.modules.pop("rsclip_wheel_probe")


def test_offline_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(deps.WHEELS_ENV, str(tmp_path / "empty-wheels"))
    (tmp_path / "empty-wheels").mkdir()
    with pytest.raises(deps.DependencyInstallError) as failure:
        deps.install(["rasterio>=99", "onnxruntime>=99"], tmp_path / "deps")
    message = str(failure.value)
    assert "No matching distribution" in message  # pip's own words first
    assert "sudo apt install python3-rasterio" in message
    assert "folder of wheels (the only way for onnxruntime)" in message and "pip download" in message
    assert "From wheels…" in message


def test_missing_wheel_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(deps.WHEELS_ENV, str(tmp_path / "nope"))
    with pytest.raises(deps.DependencyInstallError, match="nope.*no such folder"):
        deps.install(["rsclip-wheel-probe"], tmp_path / "deps")


def test_packages_live_in_the_profile_not_in_the_plugin(monkeypatch):
    from qgis.core import QgsApplication

    monkeypatch.delenv(deps.DEPS_DIR_ENV, raising=False)
    folder = deps.default_deps_dir()
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert folder == Path(QgsApplication.qgisSettingsDirPath()) / "rsclip" / "deps" / tag
    assert PLUGIN_DIR not in folder.parents  # a plugin update replaces PLUGIN_DIR only


def test_qgis_own_packages_are_not_shadowed():
    """Debian's idna/click stay the ones QGIS imports: the folder is appended and holds no copy."""
    folder = deps.default_deps_dir()
    inside = deps._dists_in([str(folder)])
    assert "idna" not in inside and "click" not in inside
    entries = [os.path.abspath(p) for p in sys.path]
    assert entries.index(str(folder)) > entries.index("/usr/lib/python3/dist-packages")
    import click
    import idna

    assert idna.__file__.startswith("/usr/lib/python3/") and click.__file__.startswith("/usr/lib/python3/")


def test_overrides_are_limited_to_the_recorded_modules(tmp_path, monkeypatch):
    system, folder = tmp_path / "system", tmp_path / "deps"
    for root, value in ((system, "system"), (folder, "folder")):
        for name in ("rsclip_probe_a", "rsclip_probe_b"):
            (root / name).mkdir(parents=True)
            (root / name / "__init__.py").write_text(f"WHERE = {value!r}\n")
    (folder / deps.OVERRIDES_FILE).write_text("rsclip_probe_a\n")
    monkeypatch.syspath_prepend(str(system))
    deps.activate(folder)
    try:
        importlib.invalidate_caches()
        assert importlib.import_module("rsclip_probe_a").WHERE == "folder"  # needed newer: folder first
        assert importlib.import_module("rsclip_probe_b").WHERE == "system"  # everything else: QGIS's own
    finally:
        sys.path.remove(str(folder))
        sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "folder", None) != str(folder)]
        for name in ("rsclip_probe_a", "rsclip_probe_b"):
            sys.modules.pop(name, None)


def test_dock_shows_the_offline_advice_and_installs_from_a_chosen_wheel_folder(plugin, monkeypatch, tmp_path):
    from qgis.core import QgsSettings
    from qgis.PyQt.QtWidgets import QMessageBox
    from qgis_helpers import run_dock_task

    dock = plugin.dock
    missing = [deps.Requirement("rasterio", "rasterio", "1.3")]
    monkeypatch.setattr(deps, "missing_requirements", lambda *a, **k: list(missing))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Yes))
    monkeypatch.delenv(deps.WHEELS_ENV, raising=False)
    seen = []

    def offline_ensure(*args, **kwargs):
        seen.append(deps.wheel_folder())
        raise deps.DependencyInstallError(
            "pip failed (exit 1):\nERROR: No matching distribution found for rasterio>=1.3\n\n"
            + deps.offline_advice(["rasterio>=1.3"])
        )

    monkeypatch.setattr(deps, "ensure", offline_ensure)
    run_dock_task(dock, dock.install_dependencies)
    assert "sudo apt install python3-rasterio" in dock.status_label.text()
    assert "From wheels…" in dock.status_label.text()
    assert not dock.wheels_button.isHidden()
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    try:
        run_dock_task(dock, lambda: dock.install_from_wheels(str(wheels)))
        assert seen == [None, wheels]  # the second attempt installs from the chosen folder
    finally:
        QgsSettings().remove(deps.WHEELS_SETTING)
