"""The installable zip is self-contained: QGIS loads the plugin from it with only its vendored
rsclip_core, and without the Python dependencies it still loads and offers to install them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from qgis_helpers import REPO_ROOT

from qgis_plugin import deps

START = textwrap.dedent(
    """
    import sys
    from qgis.core import QgsApplication
    app = QgsApplication([], True)
    app.initQgis()
    import qgis.utils
    from qgis.gui import QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtWidgets import QMainWindow, QMenu, QToolBar

    class Iface:  # the part of QgisInterface the plugin uses, removals included
        def __init__(self):
            self.window = QMainWindow()
            self.canvas = QgsMapCanvas(self.window)
            self.bar = QgsMessageBar(self.window)
            self.toolbar = QToolBar(self.window)
            self.menu = QMenu("Plugins", self.window)
        def mainWindow(self): return self.window
        def mapCanvas(self): return self.canvas
        def messageBar(self): return self.bar
        def addDockWidget(self, area, dock): self.window.addDockWidget(area, dock)
        def removeDockWidget(self, dock): self.window.removeDockWidget(dock)
        def addToolBarIcon(self, action): self.toolbar.addAction(action)
        def removeToolBarIcon(self, action): self.toolbar.removeAction(action)
        def addPluginToMenu(self, name, action): self.menu.addAction(action)
        def removePluginMenu(self, name, action): self.menu.removeAction(action)

    qgis.utils.iface = Iface()
    # What QGIS does at start-up for an installed plugin folder.
    qgis.utils.plugin_paths = [sys.argv[1]]
    qgis.utils.updateAvailablePlugins()
    assert "rsclip" in qgis.utils.available_plugins, qgis.utils.available_plugins
    assert qgis.utils.pluginMetadata("rsclip", "qgisMinimumVersion") == "3.22"
    assert qgis.utils.loadPlugin("rsclip") and qgis.utils.startPlugin("rsclip")
    plugin = qgis.utils.plugins["rsclip"]
    provider = QgsApplication.processingRegistry().providerById("rsclip")
    assert plugin.dock is not None and provider is not None and len(provider.algorithms()) == 3
    """
)

WITH_DEPS = START + textwrap.dedent(
    """
    assert plugin.dock.refresh_dependencies() == []
    import rsclip_core
    from rsclip_core.inference import load_classes, run_search
    assert rsclip_core.__file__.startswith(sys.argv[1]), rsclip_core.__file__
    assert len(load_classes()) >= 8
    run = run_search(sys.argv[2], "green", model_dir=sys.argv[3], top_k=3, out_gpkg=sys.argv[4])
    assert len(run.hits) == 3
    assert "torch" not in sys.modules
    assert len(qgis.utils.iface.toolbar.actions()) == 1
    assert qgis.utils.unloadPlugin("rsclip")
    assert QgsApplication.processingRegistry().providerById("rsclip") is None
    assert qgis.utils.iface.toolbar.actions() == [] and qgis.utils.iface.menu.actions() == []
    print("zip-ok")
    """
)

WITHOUT_DEPS = START + textwrap.dedent(
    """
    missing = {r.dist for r in plugin.dock.refresh_dependencies()}
    assert {"onnxruntime", "tokenizers"} <= missing, missing
    assert not plugin.dock.deps_box.isHidden() and "onnxruntime" in plugin.dock.deps_label.text()
    assert not plugin.dock.search_button.isEnabled() and not plugin.dock.landcover_button.isEnabled()
    assert "onnxruntime" not in sys.modules
    assert qgis.utils.unloadPlugin("rsclip")
    print("zip-ok")
    """
)


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory: pytest.TempPathFactory):
    """Build the zip with scripts/build_plugin_zip.sh and extract it as a QGIS plugin folder."""
    root = tmp_path_factory.mktemp("zip")
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build_plugin_zip.sh"), str(root / "dist")],
        capture_output=True,
        text=True,
        check=True,
    )
    archives = list((root / "dist").glob("rsclip-*.zip"))
    assert len(archives) == 1, out.stdout
    with zipfile.ZipFile(archives[0]) as archive:
        names = archive.namelist()
        archive.extractall(root / "plugins")
    return names, root / "plugins"


def _run(script: str, plugins: Path, deps_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=str(plugins), QT_QPA_PLATFORM="offscreen", RSCLIP_QGIS_DEPS_DIR=str(deps_dir)
    )
    return subprocess.run(
        [sys.executable, "-c", script, str(plugins), *args],
        capture_output=True,
        text=True,
        cwd=plugins.parent,
        env=env,
        timeout=300,
    )


def test_zip_contents(plugin_zip):
    names, _plugins = plugin_zip
    for required in (
        "rsclip/__init__.py",
        "rsclip/metadata.txt",
        "rsclip/icon.png",
        "rsclip/LICENSE",
        "rsclip/vendor/rsclip_core/spec.py",
        "rsclip/vendor/rsclip_core/prompts.py",
        "rsclip/vendor/rsclip_core/preprocess.py",
        "rsclip/vendor/rsclip_core/inference/runs.py",
        "rsclip/vendor/rsclip_core/resources/__init__.py",
        "rsclip/vendor/rsclip_core/resources/classes/landcover.yaml",
    ):
        assert required in names
    if (REPO_ROOT / "rsclip_core" / "resources" / "models" / "default" / "rsclip.json").is_file():
        assert "rsclip/vendor/rsclip_core/resources/models/default/image.onnx" in names
    assert "rsclip/vendor/rsclip_core/resources/samples/naip_m_4709963_se_14_1_20200831.tif" in names
    assert not [n for n in names if ".mlpackage/" in n]
    allowed = ("rsclip_core/__init__.py", "rsclip_core/spec.py", "rsclip_core/prompts.py", "rsclip_core/preprocess.py",
               "rsclip_core/py.typed")
    torch_side = [
        n for n in names
        if "/rsclip_core/" in n and "/inference/" not in n and "/resources/" not in n and not n.endswith(allowed)
    ]
    assert torch_side == []
    assert not [n for n in names if "__pycache__" in n or "/deps/" in n]


def test_qgis_loads_the_zipped_plugin_and_it_runs(plugin_zip, raster_path, model_dir, tmp_path):
    _names, plugins = plugin_zip
    hits = str(tmp_path / "hits.gpkg")
    result = _run(WITH_DEPS, plugins, deps.default_deps_dir(), str(raster_path), str(model_dir), hits)
    assert "zip-ok" in result.stdout, result.stderr[-3000:]


def test_without_dependencies_the_plugin_loads_and_offers_the_install(plugin_zip, tmp_path):
    _names, plugins = plugin_zip
    result = _run(WITHOUT_DEPS, plugins, tmp_path / "empty-deps")
    assert "zip-ok" in result.stdout, result.stderr[-3000:]
