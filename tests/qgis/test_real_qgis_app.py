"""The plugin inside the real QGIS desktop application (``qgis`` under Xvfb), installed from the zip.

This catches what an embedded-Python test cannot: the QGIS binary loads its GEOS/GDAL/PROJ
globally, so wheels built against newer libraries can misbehave there (e.g. shapely 2.1 on
GEOS 3.11). ``RSCLIP_WRITE_SCREENSHOT=1`` also saves docs/img/qgis_app.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from qgis_helpers import REPO_ROOT

from qgis_plugin import deps

pytestmark = pytest.mark.skipif(
    shutil.which("qgis") is None or shutil.which("xvfb-run") is None,
    reason="needs the qgis binary and xvfb-run (scripts/setup_qgis.sh installs both)",
)


def test_plugin_in_the_qgis_desktop_app(tmp_path, raster_path, model_dir):
    subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build_plugin_zip.sh"), str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    profile = tmp_path / "profiles" / "default"
    plugins_dir = profile / "python" / "plugins"
    plugins_dir.mkdir(parents=True)
    with zipfile.ZipFile(next((tmp_path / "dist").glob("rsclip-*.zip"))) as archive:
        archive.extractall(plugins_dir)
    (profile / "QGIS").mkdir()
    (profile / "QGIS" / "QGIS3.ini").write_text(
        "[PythonPlugins]\nrsclip=true\n\n[qgis]\ncheckVersion=false\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    report = tmp_path / "report.json"
    shot = (
        REPO_ROOT / "docs" / "img" / "qgis_app.png"
        if os.environ.get("RSCLIP_WRITE_SCREENSHOT")
        else tmp_path / "app.png"
    )
    env = dict(
        os.environ,
        RSCLIP_QGIS_DEPS_DIR=str(deps.default_deps_dir()),
        RSCLIP_APP_RASTER=str(raster_path),
        RSCLIP_APP_MODEL=str(model_dir / "rsclip.json"),
        RSCLIP_APP_OUT=str(out),
        RSCLIP_APP_REPORT=str(report),
        RSCLIP_APP_SCREENSHOT=str(shot),
        RSCLIP_QGIS_CACHE=str(tmp_path / "cache"),
    )
    env.pop("QT_QPA_PLATFORM", None)  # a real (virtual) X display
    env.pop("PYTHONPATH", None)  # only what QGIS itself puts on sys.path
    command = [
        "xvfb-run",
        "-a",
        "-s",
        "-screen 0 1440x900x24",
        "qgis",
        "--profiles-path",
        str(tmp_path),
        "--nologo",
        "--noversioncheck",
        "--code",
        str(Path(__file__).with_name("real_app_script.py")),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert report.is_file(), f"QGIS exited {proc.returncode} without a report:\n{proc.stderr[-3000:]}"
    result = json.loads(report.read_text())
    assert result["errors"] == [], result["errors"]
    assert "rsclip" in result["active"] and result["missing"] == []
    assert result["steps"] == ["start_landcover", "start_search", "run_processing", "finish"]
    layers = result["layers"]
    assert "rsclip: green vegetation" in layers
    assert any(name.startswith("rsclip land cover:") for name in layers)
    assert any(name.startswith("rsclip land cover polygons:") for name in layers)
    assert Path(result["processing_output"]).is_file()
    assert "8 hits" in result["status"]
    assert result.get("screenshot") is True and shot.stat().st_size > 50_000
