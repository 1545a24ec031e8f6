"""The installable zip is self-contained: the plugin runs from it with only its vendored rsclip_core."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile

from conftest import REPO_ROOT

from qgis_plugin import deps

CHECK = textwrap.dedent(
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
    assert plugin.dock is not None and plugin.dock.refresh_dependencies() == []
    provider = QgsApplication.processingRegistry().providerById("rsclip")
    assert provider is not None and len(provider.algorithms()) == 3
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


def test_zip_contents_and_standalone_run(tmp_path, raster_path, model_dir):
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build_plugin_zip.sh"), str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        check=True,
    )
    archives = list((tmp_path / "dist").glob("rsclip-*.zip"))
    assert len(archives) == 1, out.stdout
    with zipfile.ZipFile(archives[0]) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "plugins")
    for required in (
        "rsclip/__init__.py",
        "rsclip/metadata.txt",
        "rsclip/icon.png",
        "rsclip/LICENSE",
        "rsclip/vendor/rsclip_core/spec.py",
        "rsclip/vendor/rsclip_core/inference/runs.py",
        "rsclip/vendor/resources/classes/landcover.yaml",
    ):
        assert required in names
    assert not [
        n
        for n in names
        if "/rsclip_core/" in n
        and "/inference/" not in n
        and not n.endswith(("rsclip_core/__init__.py", "rsclip_core/spec.py", "rsclip_core/py.typed"))
    ]
    assert not [n for n in names if "__pycache__" in n or "/deps/" in n]

    plugins = tmp_path / "plugins"
    env = dict(
        os.environ,
        PYTHONPATH=str(plugins),
        QT_QPA_PLATFORM="offscreen",
        RSCLIP_QGIS_DEPS_DIR=str(deps.default_deps_dir()),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CHECK,
            str(plugins),
            str(raster_path),
            str(model_dir),
            str(tmp_path / "hits.gpkg"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert "zip-ok" in result.stdout, result.stderr[-3000:]
