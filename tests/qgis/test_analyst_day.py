"""An analyst's day with the plugin (issue 17): project changes during runs, readable styles,
ground areas, one band default, honest warnings, a dock that fits a laptop, tidy result layers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsGraduatedSymbolRenderer,
    QgsLayerTree,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandPseudoColorRenderer,
)
from qgis_helpers import run_dock_task, wait_until

from qgis_plugin import bridge, layers, wording
from qgis_plugin.dock import landcover_summary


@pytest.fixture()
def excepthook(monkeypatch):
    """Exceptions raised in Qt slots (e.g. a task's finished()) end up here instead of a dialog."""
    caught = []
    monkeypatch.setattr(sys, "excepthook", lambda *exc: caught.append(exc))
    return caught


def _watch(task) -> list:
    """How the task ends as QGIS sees it: 'completed' or 'terminated' (shown as "Task failed")."""
    ends: list = []
    task.taskCompleted.connect(lambda: ends.append("completed"))
    task.taskTerminated.connect(lambda: ends.append("terminated"))
    return ends


def _outputs(dock) -> list:
    return sorted(p.name for p in Path(dock.output_widget.filePath()).iterdir())


def test_project_new_while_land_cover_runs_cancels_it_cleanly(dock, excepthook):
    dock.tile_spin.setValue(8)  # thousands of tiles: still running when the project is closed
    task = dock.start_landcover()
    assert task is not None, dock.last_error
    ends = _watch(task)
    QgsProject.instance().clear()  # Project > New: the raster layer is deleted
    wait_until(lambda: task not in dock.tasks, 120)
    assert excepthook == [] and dock.last_error == ""
    assert "Cancelled" in dock.status_label.text() and not dock.cancel_button.isEnabled()
    assert ends == ["completed"]  # not QGIS's "Task failed"
    assert not [n for n in _outputs(dock) if n.endswith((".tif", ".gpkg"))]


def test_a_run_that_finished_just_before_project_new_writes_nothing(dock, excepthook):
    task = dock.start_landcover()
    assert task is not None, dock.last_error
    deadline = time.monotonic() + 120
    while task.result_value is None and time.monotonic() < deadline:  # done in the worker, not yet reported
        time.sleep(0.05)
    assert task.result_value is not None
    QgsProject.instance().clear()
    wait_until(lambda: task not in dock.tasks, 60)
    assert excepthook == [] and QgsProject.instance().mapLayers() == {}
    assert not [n for n in _outputs(dock) if n.endswith((".tif", ".gpkg"))]


def test_removing_the_raster_cancels_its_run(dock, raster_layer, excepthook):
    dock.tile_spin.setValue(8)
    dock.query_edit.setText("green")
    task = dock.start_search()
    assert task is not None, dock.last_error
    QgsProject.instance().removeMapLayer(raster_layer.id())
    wait_until(lambda: task not in dock.tasks, 120)
    assert excepthook == [] and "Cancelled" in dock.status_label.text()


def test_cancel_is_reported_as_cancelled_not_failed(dock):
    dock.tile_spin.setValue(8)
    dock.query_edit.setText("green trees")
    task = dock.start_search()
    ends = _watch(task)
    dock.cancel_tasks()  # what the Cancel button does, whether the task is still queued or running
    wait_until(lambda: task not in dock.tasks, 60)
    assert ends == ["completed"] and "Cancelled" in dock.status_label.text()


def test_hits_are_translucent_with_opaque_outlines_and_percentiles(dock):
    dock.query_edit.setText("green vegetation")
    dock.topk_spin.setValue(8)
    run_dock_task(dock, dock.start_search)
    renderer = dock.last_hits_layer.renderer()
    assert isinstance(renderer, QgsGraduatedSymbolRenderer) and len(renderer.ranges()) > 1
    for item in renderer.ranges():
        fill = item.symbol().symbolLayer(0)
        assert fill.fillColor().alpha() == layers.HIT_FILL_ALPHA and fill.strokeColor().alpha() == 255
    assert dock.last_hits_layer.fields().indexOf("percentile") >= 0
    assert "percentile" in dock.last_hits_layer.labeling().settings().fieldName


def test_processing_heatmap_is_a_translucent_ramp_below_the_hits(qgis_processing, raster_path, model_dir, tmp_path):
    import processing

    from qgis_plugin.processing_provider import RsclipProvider

    registry = QgsApplication.processingRegistry()
    provider = RsclipProvider()
    registry.addProvider(provider)
    try:
        QgsProject.instance().clear()
        processing.runAndLoadResults("rsclip:textsearch", {
            "INPUT": str(raster_path), "MODEL": str(model_dir / "rsclip.json"), "CACHE_FOLDER": str(tmp_path),
            "QUERY": "green", "TOP_K": 5, "OUTPUT": str(tmp_path / "hits.gpkg"),
            "HEATMAP": str(tmp_path / "heat.tif")})
        order = [n.layer() for n in QgsProject.instance().layerTreeRoot().findLayers()]
        kinds = [layer.customProperty(layers.KIND_PROPERTY) for layer in order]
        assert kinds.index("hits") < kinds.index("heatmap")  # hits drawn on top
        heat = order[kinds.index("heatmap")]
        assert isinstance(heat.renderer(), QgsSingleBandPseudoColorRenderer) and heat.renderer().opacity() < 1
        ranges = order[kinds.index("hits")].renderer().ranges()  # keep the copies alive while used
        assert all(r.symbol().symbolLayer(0).fillColor().alpha() < 255 for r in ranges)  # as the dock
    finally:
        registry.removeProvider("rsclip")


def test_web_mercator_raster_gets_a_units_note_and_ground_areas(dock, tmp_path):
    from pyproj import Transformer
    from rasterio.transform import from_origin

    from rsclip_core.inference.toy_model import write_color_raster

    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(10.0, 60.0)
    path = write_color_raster(tmp_path / "mercator.tif", 128, 128, crs="EPSG:3857",
                              transform=from_origin(x, y, 2.0, 2.0))
    layer = QgsRasterLayer(str(path), "mercator", "gdal")
    QgsProject.instance().addMapLayer(layer)
    dock.raster_combo.setLayer(layer)
    assert dock.units_label.isVisibleTo(dock) and "0.50 m on the ground" in dock.units_label.text()
    dock.tile_spin.setValue(32)
    run_dock_task(dock, dock.start_landcover)
    polygons = next(x for x in QgsProject.instance().mapLayers().values()
                    if x.name().startswith("rsclip land cover polygons: mercator"))
    total = sum(f["area_m2"] for f in polygons.getFeatures())
    assert total == pytest.approx((256 * 0.5) ** 2, rel=0.02)  # 256 Mercator m = 128 m on the ground


def test_four_band_raster_with_empty_bands_uses_1_2_3_in_processing(qgis_processing, model_dir, tmp_path):
    import processing

    from qgis_plugin.processing_provider import RsclipProvider
    from rsclip_core.inference.toy_model import write_color_raster

    path = write_color_raster(tmp_path / "nir.tif", 128, 128, count=4)
    registry = QgsApplication.processingRegistry()
    provider = RsclipProvider()
    registry.addProvider(provider)
    try:
        result = processing.run("rsclip:textsearch", {
            "INPUT": str(path), "MODEL": str(model_dir / "rsclip.json"), "CACHE_FOLDER": str(tmp_path),
            "QUERY": "green", "TOP_K": 3, "TILE_SIZE": 32, "OUTPUT": str(tmp_path / "hits.gpkg")})
        assert Path(result["OUTPUT"]).is_file()
    finally:
        registry.removeProvider("rsclip")
    assert bridge.default_bands(4) == [1, 2, 3] and bridge.default_bands(1) == [1]


def test_core_errors_are_worded_for_each_front_end(tmp_path):
    from rsclip_core.inference import RasterSource, TilingConfig
    from rsclip_core.inference.toy_model import write_color_raster

    path = write_color_raster(tmp_path / "nir.tif", 64, 64, count=4)
    with pytest.raises(ValueError) as failure:
        RasterSource(path, TilingConfig(), 32).bands  # noqa: B018
    assert getattr(failure.value, "field", None) == "bands"
    for worded, name in ((wording.processing_message(failure.value), "BANDS"),
                         (wording.dock_message(failure.value), "Bands (R, G, B)")):
        assert "--" not in worded and name in worded, worded


def test_warnings_when_top_k_covers_every_tile(dock):
    dock.query_edit.setText("green")
    dock.topk_spin.setValue(10000)
    run_dock_task(dock, dock.start_search)
    assert any("every tile" in w for w in dock.last_warnings)
    assert "every tile" in dock.status_label.text()


def test_dock_fits_a_1366x768_screen(dock):
    hint = dock.minimumSizeHint()
    assert hint.height() <= 400, hint  # was 741 px: Search, progress and Cancel off screen
    from qgis.gui import QgsCollapsibleGroupBox

    for box in (dock.input_box, dock.model_box):
        assert isinstance(box, QgsCollapsibleGroupBox)
        box.setCollapsed(True)
        assert box.isCollapsed()
        box.setCollapsed(False)
    from rsclip_core.spec import ModelMetadata

    meta = ModelMetadata.read(bridge.resolve_model_dir(dock.model_combo.currentData()))
    assert f"{meta.image_size} px" in dock.tile_spin.toolTip()
    assert "resampled" in dock.resolution_spin.toolTip() and "%" in dock.overlap_spin.toolTip()


def test_land_cover_summary_lists_the_largest_classes_first():
    stats = [{"name": "a", "fraction": 0.1}, {"name": "b", "fraction": 0.6}, {"name": "c", "fraction": 0.0},
             {"name": "d", "fraction": 0.3}]
    assert landcover_summary(stats) == "b 60%, d 30%, a 10%"


def test_repeated_queries_are_numbered_in_a_group_per_raster(dock, raster_layer):
    dock.query_edit.setText("green")
    run_dock_task(dock, dock.start_search)
    run_dock_task(dock, dock.start_search)
    group = layers.results_group(QgsProject.instance(), raster_layer.name())
    names = [child.name() for child in group.children() if QgsLayerTree.isLayer(child)]
    assert names == ["rsclip: green (2)", "rsclip: green"]


def test_unsaved_project_output_folder_is_said_and_chosen(dock, tmp_path, monkeypatch):
    from qgis.core import QgsSettings

    QgsSettings().remove(bridge.UNSAVED_OUTPUT_SETTING)
    assert QgsProject.instance().homePath() == ""
    default = Path(QgsApplication.qgisSettingsDirPath()) / "rsclip" / "outputs"
    assert bridge.default_output_dir() == default
    dock.output_widget.setFilePath("")
    dock._update_output_hint()
    assert str(default) in dock.output_widget.lineEdit().placeholderText()
    chosen = tmp_path / "my-results"
    try:
        assert dock.choose_unsaved_output_dir(str(chosen)) == str(chosen)
        assert bridge.default_output_dir() == chosen
        assert str(chosen) in dock.output_widget.lineEdit().placeholderText()
        dock.query_edit.setText("green")
        run_dock_task(dock, dock.start_search)
        assert str(chosen) in dock.status_label.text() and list(chosen.glob("search_green_*.gpkg"))
    finally:
        QgsSettings().remove(bridge.UNSAVED_OUTPUT_SETTING)


def test_zoom_to_hits_works_after_reopening_the_project(dock, tmp_path):
    dock.query_edit.setText("green")
    run_dock_task(dock, dock.start_search)
    project = QgsProject.instance()
    path = str(tmp_path / "day.qgz")
    assert project.write(path)
    project.clear()
    assert not dock.zoom_button.isEnabled()
    assert project.read(path)
    wait_until(lambda: dock.zoom_button.isEnabled(), 10)
    assert dock.last_hits_layer.name() == "rsclip: green"
    dock.zoom_to_hits()  # does not raise


def test_land_cover_polygon_legend_is_ordered_by_area(dock):
    run_dock_task(dock, dock.start_landcover)
    polygons = next(x for x in QgsProject.instance().mapLayers().values()
                    if x.name().startswith("rsclip land cover polygons:"))
    areas: dict = {}
    for feature in polygons.getFeatures():
        areas[feature["class_name"]] = areas.get(feature["class_name"], 0.0) + feature["area_m2"]
    legend = [c.value() for c in polygons.renderer().categories()]
    present = [name for name in legend if name in areas]
    assert present == sorted(areas, key=lambda n: -areas[n])
    assert "%" in polygons.renderer().categories()[0].label()
    assert "Land cover written" in dock.status_label.text()
    shares = [float(part.rsplit(" ", 1)[1].rstrip("%")) for part in
              dock.status_label.text().split(": ", 1)[1].split("<br>")[0].split(", ") if "%" in part]
    assert shares == sorted(shares, reverse=True)
