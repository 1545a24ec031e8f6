"""Fixtures for the QGIS plugin tests: real QGIS (pytest-qgis), a tiny ONNX model, a real GeoTIFF.

Run with ``scripts/test_qgis.sh``: Debian's python3 (QGIS 3.22, numpy 1.24, no torch), the
plugin's dependencies from its plugin-local folder, ``rsclip_core`` from this checkout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from qgis_helpers import REPO_ROOT

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

try:
    import qgis.core  # noqa: F401
except ImportError:
    # The venv's pytest (make test's first half) has no QGIS: this suite runs only in QGIS's own
    # Python through scripts/test_qgis.sh, so skip collecting it here (and keep the plugin's
    # dependency folder off the venv's sys.path).
    collect_ignore_glob = ["test_*.py"]
else:
    from qgis_plugin import bootstrap_paths

    bootstrap_paths()

SHARED_DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
REAL_RASTER = SHARED_DATA / "rasters" / "rasterio" / "RGB.byte.tif"  # Landsat-7, EPSG:32618, 791x718


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny colour model (rsclip_core.inference.toy_model) written by scripts/test_qgis.sh."""
    env = os.environ.get("RSCLIP_QGIS_TEST_MODEL")
    if env and (Path(env) / "rsclip.json").is_file():
        return Path(env)
    try:  # works where onnx is importable (not in Debian's QGIS Python)
        from rsclip_core.inference.toy_model import write_toy_model

        return write_toy_model(tmp_path_factory.mktemp("model"))
    except ImportError:
        pytest.fail("no test model: run the suite with scripts/test_qgis.sh (it writes one with the venv)")


@pytest.fixture(scope="session")
def dense_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny colour model with a ``dense`` image output (4 x 4 cells), written by scripts/test_qgis.sh."""
    env = os.environ.get("RSCLIP_QGIS_TEST_DENSE_MODEL")
    if env and (Path(env) / "rsclip.json").is_file():
        return Path(env)
    try:
        from rsclip_core.inference.toy_model import write_toy_model

        return write_toy_model(tmp_path_factory.mktemp("dense-model"), dense_grid=4)
    except ImportError:
        pytest.fail("no dense test model: run the suite with scripts/test_qgis.sh")


@pytest.fixture(scope="session")
def raster_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$RSCLIP_QGIS_TEST_RASTER``, else a real Landsat GeoTIFF from ../shared/data, else a generated one."""
    env = os.environ.get("RSCLIP_QGIS_TEST_RASTER")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"RSCLIP_QGIS_TEST_RASTER: no such file: {env}")
        return Path(env)
    if REAL_RASTER.is_file():
        return REAL_RASTER
    from rsclip_core.inference.toy_model import write_color_raster

    return write_color_raster(tmp_path_factory.mktemp("raster") / "colour.tif", 512, 448, crs="EPSG:32618")


@pytest.fixture()
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh embedding-index cache per test (the plugin reads $RSCLIP_QGIS_CACHE)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RSCLIP_QGIS_CACHE", str(folder))
    return folder


@pytest.fixture()
def raster_layer(qgis_new_project: Any, raster_path: Path) -> Any:
    from qgis.core import QgsProject, QgsRasterLayer

    layer = QgsRasterLayer(str(raster_path), raster_path.stem, "gdal")
    assert layer.isValid(), raster_path
    QgsProject.instance().addMapLayer(layer)
    return layer


@pytest.fixture()
def plugin(qgis_iface: Any, qgis_new_project: Any) -> Any:
    """The plugin as QGIS loads it: classFactory(iface) + initGui(); unloaded afterwards."""
    from qgis.core import QgsProject

    import qgis_plugin

    QgsProject.instance().clear()  # no dock settings left over from another test
    instance = qgis_plugin.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture()
def provider(qgis_processing: Any, qgis_new_project: Any) -> Any:
    """rsclip's Processing provider, registered for one test."""
    from qgis.core import QgsApplication

    from qgis_plugin.processing_provider import RsclipProvider

    registry = QgsApplication.processingRegistry()
    instance = RsclipProvider()  # keep the Python object alive while registered (as the plugin does)
    assert registry.addProvider(instance)
    yield instance
    registry.removeProvider("rsclip")


@pytest.fixture()
def dock(plugin: Any, raster_layer: Any, model_dir: Path, cache_dir: Path, tmp_path: Path) -> Any:
    """The plugin's dock pointed at the test raster, the tiny model and a temp output folder."""
    d = plugin.dock
    d.raster_combo.setLayer(raster_layer)
    d.set_model_path(str(model_dir / "image.onnx"))
    out = tmp_path / "outputs"
    out.mkdir()
    d.output_widget.setFilePath(str(out))
    return d
