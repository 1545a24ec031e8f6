"""The plugin loads the way QGIS loads it, registers its Processing provider and metadata is valid."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from qgis.core import QgsApplication
from qgis.gui import QgsDockWidget

REPO = Path(__file__).resolve().parents[2]


def test_class_factory_init_gui_creates_dock_and_provider(plugin, qgis_iface):
    assert isinstance(plugin.dock, QgsDockWidget)
    assert plugin.dock.objectName() == "RsclipDock"
    provider = QgsApplication.processingRegistry().providerById("rsclip")
    assert provider is plugin.provider
    names = sorted(a.name() for a in provider.algorithms())
    assert names == ["buildindex", "landcover", "textsearch"]
    displayed = sorted(a.displayName() for a in provider.algorithms())
    assert displayed == ["Build embedding index", "Text search", "Zero-shot land cover"]
    assert plugin.action is not None and not plugin.action.icon().isNull()
    # The dock is usable: dependencies satisfied (scripts/setup_qgis.sh), run buttons enabled.
    assert plugin.dock.refresh_dependencies() == []
    assert plugin.dock.search_button.isEnabled() and plugin.dock.landcover_button.isEnabled()


def test_unload_removes_provider(qgis_iface, qgis_new_project):
    import qgis_plugin

    instance = qgis_plugin.classFactory(qgis_iface)
    instance.initGui()
    assert QgsApplication.processingRegistry().providerById("rsclip") is not None
    instance.unload()
    assert QgsApplication.processingRegistry().providerById("rsclip") is None
    assert instance.dock is None


def test_metadata_is_valid_for_the_plugin_repository():
    parser = configparser.ConfigParser()
    parser.read(REPO / "metadata.txt", encoding="utf-8")
    general = parser["general"]
    for key in (
        "name",
        "qgisMinimumVersion",
        "description",
        "about",
        "version",
        "author",
        "email",
        "repository",
        "tracker",
        "homepage",
        "tags",
        "category",
        "icon",
        "experimental",
        "deprecated",
    ):
        assert general.get(key, "").strip(), f"metadata.txt: {key} missing"
    assert general["qgisMinimumVersion"] == "3.22"
    assert re.fullmatch(r"\d+\.\d+\.\d+", general["version"])
    assert general["repository"].startswith("https://") and general["tracker"].startswith("https://")
    assert (REPO / "qgis_plugin" / general["icon"]).is_file()
    assert general["experimental"] in ("True", "False") and general["deprecated"] in ("True", "False")


def test_model_picker_without_bundled_model_explains(plugin, monkeypatch):
    from qgis_plugin import bridge

    monkeypatch.setattr(bridge, "bundled_model_dir", lambda: None)
    dock = plugin.dock
    dock._fill_models("")
    assert "no bundled model" in dock.model_combo.currentText()
    assert "Browse" in dock.model_info.text()


def test_model_picker_shows_metadata_of_a_user_model(plugin, model_dir):
    dock = plugin.dock
    dock.set_model_path(str(model_dir / "image.onnx"))
    text = dock.model_info.text()
    assert "toy-colour" in text and "8-d" in text and "32px" in text
    dock.set_model_path(str(model_dir.parent))  # not a model directory
    assert "not an exported rsclip model" in dock.model_info.text()
