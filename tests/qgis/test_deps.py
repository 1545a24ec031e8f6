"""The guarded dependency installer, against QGIS's real Python (numpy 1.24 from Debian)."""

from __future__ import annotations

import sys

import pytest

from qgis_plugin import deps


def test_runtime_requirements_are_satisfied_after_setup():
    assert deps.missing_requirements() == []
    assert deps.folder_conflicts() == []
    import numpy

    assert numpy.__file__.startswith("/usr/lib/python3/dist-packages")  # QGIS's own numpy is the one used


def test_missing_and_too_old_are_detected():
    absent = deps.Requirement("rsclip-no-such-package", "rsclip_no_such_package", "1.0")
    too_old = deps.Requirement("numpy", "numpy", "99.0")
    fine = deps.Requirement("numpy", "numpy", "1.0")
    assert deps.missing_requirements([absent, too_old, fine]) == [absent, too_old]


def test_constraints_pin_what_qgis_ships():
    lines = deps.pinned_constraints()
    import numpy

    assert f"numpy=={numpy.__version__}" in lines
    assert any(line.startswith("pyproj==") or line == "pyproj<3.7" for line in lines)


def test_plan_refuses_to_upgrade_numpy(tmp_path):
    with pytest.raises(deps.DependencyInstallError):
        deps.plan_install(["numpy>=2"], tmp_path)


def test_install_into_a_plugin_folder_and_repair(tmp_path, monkeypatch):
    folder = tmp_path / "deps"
    logs = []
    pins = deps.install(["tomli-w>=1.0"], folder, log=logs.append)
    assert [p.split("==")[0].lower().replace("_", "-") for p in pins] == ["tomli-w"]
    assert (folder / "tomli_w").is_dir() and str(folder) in sys.path
    import tomli_w

    assert tomli_w.dumps({"a": 1}).strip() == "a = 1"
    assert any("--no-deps" in line and "--target" in line for line in logs)
    # Planning again finds nothing to do: the folder is on the resolver's path.
    assert deps.plan_install(["tomli-w>=1.0"], folder) == []
    # A package that would shadow QGIS's numpy is detected and removed from the folder.
    fake = folder / "numpy-2.9.0.dist-info"
    fake.mkdir()
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: numpy\nVersion: 2.9.0\n")
    (fake / "RECORD").write_text("numpy-2.9.0.dist-info/METADATA,,\nnumpy-2.9.0.dist-info/RECORD,,\n")
    assert deps.folder_conflicts(folder) == ["numpy"]
    deps.remove_from_folder("numpy", folder)
    assert deps.folder_conflicts(folder) == [] and not fake.exists()
    sys.path.remove(str(folder))


def test_python_executable_is_qgis_python():
    exe = deps.python_executable()
    assert "python3" in exe
