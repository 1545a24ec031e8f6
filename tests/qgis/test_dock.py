"""Dock runs on a real GeoTIFF with a tiny ONNX model: layers, CRS, features, scores, reuse, cancel."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis_helpers import run_dock_task, wait_until

from qgis_plugin.settings import EXTENT_CANVAS, EXTENT_SELECTION, load_from_project


def _green_fraction(path: Path, bounds=None) -> float:
    """Mean of G / (R + G + B) over valid pixels (in ``bounds`` or the whole raster)."""
    import rasterio
    from rasterio.windows import from_bounds

    with rasterio.open(path) as src:
        window = from_bounds(*bounds, transform=src.transform) if bounds else None
        rgb = src.read([1, 2, 3], window=window, boundless=True, fill_value=0).astype(np.float64)
    total = rgb.sum(axis=0)
    valid = total > 0
    return float((rgb[1][valid] / total[valid]).mean())


def _layers_named(prefix: str):
    return [layer for layer in QgsProject.instance().mapLayers().values() if layer.name().startswith(prefix)]


def test_search_adds_ranked_scored_layer_in_raster_crs(dock, raster_layer, raster_path, cache_dir):
    dock.query_edit.setText("green vegetation")
    dock.topk_spin.setValue(5)
    run_dock_task(dock, dock.start_search)
    assert dock.last_error == ""
    hits = _layers_named("rsclip: green vegetation")
    assert len(hits) == 1
    layer = hits[0]
    assert isinstance(layer, QgsVectorLayer) and layer.isValid()
    assert layer.crs() == raster_layer.crs()
    assert layer.featureCount() == 5
    features = sorted(layer.getFeatures(), key=lambda f: f["rank"])
    scores = [f["score"] for f in features]
    assert [f["rank"] for f in features] == [1, 2, 3, 4, 5]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    raster_extent = raster_layer.extent()
    for feature in features:
        assert raster_extent.contains(feature.geometry().boundingBox())
    # The toy model embeds tile colour: the best "green" tile is greener than the raster on average.
    best = features[0].geometry().boundingBox()
    bounds = (best.xMinimum(), best.yMinimum(), best.xMaximum(), best.yMaximum())
    assert _green_fraction(raster_path, bounds) > _green_fraction(raster_path)
    assert layer.labelsEnabled() and layer.labeling() is not None
    assert dock.zoom_button.isEnabled()
    assert dock.iface.mapCanvas().extent().intersects(layer.extent())


def test_second_query_reuses_the_index(dock, cache_dir):
    dock.topk_spin.setValue(3)
    dock.query_edit.setText("blue water")
    started = time.perf_counter()
    run_dock_task(dock, dock.start_search)
    first = time.perf_counter() - started
    indexes = sorted(cache_dir.glob("*.rsclip-index.npz"))
    assert len(indexes) == 1
    built = indexes[0].stat().st_mtime_ns

    dock.query_edit.setText("red bare soil")
    started = time.perf_counter()
    run_dock_task(dock, dock.start_search)
    second = time.perf_counter() - started
    assert dock.last_error == ""
    assert sorted(cache_dir.glob("*.rsclip-index.npz")) == indexes
    assert indexes[0].stat().st_mtime_ns == built  # not rebuilt
    assert len(_layers_named("rsclip: red bare soil")) == 1
    assert second < first


def test_landcover_adds_paletted_raster_and_polygons(dock, raster_layer):
    dock.tabs.setCurrentIndex(1)
    names = [c["name"] for c in dock.class_table.classes()]
    assert "water" in names and "forest" in names  # the default class list
    run_dock_task(dock, dock.start_landcover)
    assert dock.last_error == ""
    rasters = _layers_named("rsclip land cover:")
    polygons = _layers_named("rsclip land cover polygons:")
    assert len(rasters) == 1 and len(polygons) == 1
    lc, poly = rasters[0], polygons[0]
    assert lc.isValid() and lc.crs() == raster_layer.crs()
    renderer = lc.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    labels = {c.label for c in renderer.classes()}
    assert {"water", "forest"} <= labels
    colors = {c.label: c.color.name() for c in renderer.classes()}
    assert colors["water"] == "#0064c8"
    assert poly.isValid() and poly.crs() == raster_layer.crs() and poly.featureCount() >= 1
    tree = QgsProject.instance().layerTreeRoot()
    assert tree.findLayer(lc.id()).isVisible() and not tree.findLayer(poly.id()).isVisible()
    found = {f["class_name"] for f in poly.getFeatures()}
    assert found <= set(names) | {"unclassified"}
    fractions = [f["fraction"] for f in poly.getFeatures()]
    assert sum(fractions) == pytest.approx(1.0, abs=1e-6)


def test_visible_canvas_extent_limits_the_tiles(dock, raster_layer):
    full = raster_layer.extent()
    canvas = dock.iface.mapCanvas()
    canvas.setDestinationCrs(raster_layer.crs())
    quarter = QgsRectangle(full.xMinimum(), full.center().y(), full.center().x(), full.yMaximum())
    canvas.setExtent(quarter)
    visible = canvas.extent()
    dock.extent_combo.setCurrentIndex(dock.extent_combo.findData(EXTENT_CANVAS))
    dock.query_edit.setText("green")
    dock.topk_spin.setValue(50)
    run_dock_task(dock, dock.start_search)
    assert dock.last_error == ""
    layer = _layers_named("rsclip: green")[0]
    grown = QgsRectangle(visible)
    grown.grow(raster_layer.rasterUnitsPerPixelX() * 64)  # tiles straddling the edge
    for feature in layer.getFeatures():
        assert grown.intersects(feature.geometry().boundingBox())
        assert feature.geometry().boundingBox().intersects(visible)


def test_selected_polygons_extent(dock, raster_layer):
    full = raster_layer.extent()
    mask = QgsVectorLayer(f"Polygon?crs={raster_layer.crs().authid()}", "aoi", "memory")
    box = QgsRectangle(full.center().x(), full.yMinimum(), full.xMaximum(), full.center().y())
    other = QgsRectangle(full.xMinimum(), full.yMinimum(), full.center().x(), full.center().y())
    features = []
    for rect in (box, other):
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromRect(rect))
        features.append(feature)
    mask.dataProvider().addFeatures(features)
    QgsProject.instance().addMapLayer(mask)
    first_id = next(mask.getFeatures()).id()
    mask.selectByIds([first_id])
    dock.extent_combo.setCurrentIndex(dock.extent_combo.findData(EXTENT_SELECTION))
    dock.mask_combo.setLayer(mask)
    dock.query_edit.setText("blue")
    dock.topk_spin.setValue(50)
    run_dock_task(dock, dock.start_search)
    assert dock.last_error == ""
    layer = _layers_named("rsclip: blue")[0]
    assert layer.featureCount() > 0
    selected = QgsGeometry.fromRect(box)
    for feature in layer.getFeatures():
        assert feature.geometry().intersects(selected)
    # No selection -> a clear message, no task.
    mask.removeSelection()
    assert dock.start_search() is None
    assert "no features selected" in dock.last_error


def test_cancel_stops_the_run_without_adding_layers(dock):
    dock.tile_spin.setValue(8)  # thousands of tiles: long enough to cancel
    dock.query_edit.setText("green trees")
    before = set(QgsProject.instance().mapLayers())
    task = dock.start_search()
    assert task is not None, dock.last_error
    task.cancel()  # QGIS's own task-manager cancel
    wait_until(lambda: task not in dock.tasks, 60)
    assert set(QgsProject.instance().mapLayers()) == before
    assert "Cancelled" in dock.status_label.text()


def test_bad_inputs_are_reported_not_raised(dock):
    dock.query_edit.setText("   ")
    assert dock.start_search() is None
    assert "type a query" in dock.last_error
    dock.query_edit.setText("green")
    dock.set_model_path("/nonexistent/model")
    assert dock.start_search() is None
    assert "/nonexistent/model" in dock.last_error


def test_settings_persist_in_the_project(dock, tmp_path, raster_layer, model_dir):
    dock.query_edit.setText("ships in a harbour")
    dock.topk_spin.setValue(7)
    dock.overlap_spin.setValue(25)
    dock.resolution_spin.setValue(30)
    dock.class_table.set_classes(
        [
            {"name": "sea", "prompts": ["the sea", "water"], "color": [0, 0, 255]},
            {"name": "land", "prompts": ["land"], "color": [0, 255, 0]},
        ]
    )
    dock.save_settings()
    raster_id = raster_layer.id()
    project_file = tmp_path / "saved.qgz"
    assert QgsProject.instance().write(str(project_file))
    QgsProject.instance().clear()
    assert load_from_project().query == ""
    assert QgsProject.instance().read(str(project_file))
    wait_until(lambda: dock.query_edit.text() == "ships in a harbour", 10)  # readProject -> dock reloads
    saved = load_from_project()
    assert saved.top_k == 7 and saved.overlap_percent == 25 and saved.resolution == 30
    assert saved.model_path == str(model_dir / "image.onnx")
    assert [c["name"] for c in saved.classes] == ["sea", "land"]
    assert dock.topk_spin.value() == 7 and [c["name"] for c in dock.class_table.classes()] == ["sea", "land"]
    assert dock.raster_combo.currentLayer() is not None
    assert dock.raster_combo.currentLayer().id() == raster_id


def test_class_file_round_trip(dock, tmp_path):
    dock.class_table.set_classes(
        [
            {"name": "water", "prompts": ["water", "a lake"], "color": [0, 100, 200]},
            {"name": "trees", "prompts": ["forest"], "color": [0, 100, 0]},
        ]
    )
    path = tmp_path / "classes.yaml"
    dock.save_class_file(str(path))
    assert path.is_file()
    dock.class_table.set_classes([])
    dock.load_class_file(str(path))
    assert dock.class_table.classes() == [
        {"name": "water", "prompts": ["water", "a lake"], "color": [0, 100, 200]},
        {"name": "trees", "prompts": ["forest"], "color": [0, 100, 0]},
    ]
    dock.reset_default_classes()
    assert len(dock.class_table.classes()) >= 8


def test_missing_dependencies_banner_and_install_flow(plugin, monkeypatch):
    from qgis.PyQt.QtWidgets import QMessageBox

    from qgis_plugin import deps

    dock = plugin.dock
    missing = [deps.Requirement("onnxruntime", "onnxruntime", "1.16")]
    calls = []
    monkeypatch.setattr(deps, "missing_requirements", lambda *a, **k: list(missing))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *a, **k: QMessageBox.Yes))

    def fake_ensure(*args, **kwargs):
        calls.append(kwargs)
        missing.clear()
        return ["onnxruntime==1.0"]

    monkeypatch.setattr(deps, "ensure", fake_ensure)
    assert dock.refresh_dependencies() == missing
    assert not dock.deps_box.isHidden() and "onnxruntime>=1.16" in dock.deps_label.text()
    assert not dock.search_button.isEnabled() and not dock.landcover_button.isEnabled()
    run_dock_task(dock, dock.install_dependencies)
    assert len(calls) == 1
    assert dock.deps_box.isHidden() and dock.search_button.isEnabled()
    assert "Installed 1 packages" in dock.status_label.text()


def test_default_classes_come_from_the_model_when_it_has_a_list(dock, model_dir, tmp_path):
    import json
    import shutil

    own = tmp_path / "model-with-classes"
    shutil.copytree(model_dir, own)
    meta = json.loads((own / "rsclip.json").read_text())
    meta["default_classes"] = "classes.json"
    (own / "rsclip.json").write_text(json.dumps(meta))
    classes = [
        {"name": "sea", "prompts": ["blue water"], "color": "#0000ff"},
        {"name": "land", "prompts": ["green"], "color": "#00ff00"},
    ]
    (own / "classes.json").write_text(json.dumps({"classes": classes}))
    dock.set_model_path(str(own))
    dock.reset_default_classes()
    assert [c["name"] for c in dock.class_table.classes()] == ["sea", "land"]
    assert dock.class_table.classes()[0]["color"] == [0, 0, 255]
