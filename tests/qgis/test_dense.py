"""Maps finer than a tile and localised search hits in the dock and Processing (real QGIS 3.22)."""

from __future__ import annotations


import pytest
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer, QgsWkbTypes
from qgis_helpers import run_dock_task



def _layers_named(prefix: str):
    return [layer for layer in QgsProject.instance().mapLayers().values() if layer.name().startswith(prefix)]


def test_dock_search_adds_tight_boxes_and_best_match_points(dock, raster_layer, dense_model_dir, cache_dir):
    dock.set_model_path(str(dense_model_dir / "image.onnx"))
    assert dock.detail_combo.currentData() == "" and dock.cells_spin.value() == 8  # auto, 8 cells per tile
    dock.tile_spin.setValue(64)
    dock.query_edit.setText("green vegetation")
    dock.topk_spin.setValue(4)
    run_dock_task(dock, dock.start_search)
    assert dock.last_error == ""
    (hits,) = _layers_named("rsclip: green vegetation")
    (points,) = _layers_named("rsclip points: green vegetation")
    assert hits.featureCount() == 4 and points.featureCount() == 4
    assert points.geometryType() == QgsWkbTypes.PointGeometry and points.crs() == raster_layer.crs()
    px = raster_layer.rasterUnitsPerPixelX()
    for feature in hits.getFeatures():
        box = feature.geometry().boundingBox()
        assert feature["localised"]
        tile = (feature["tile_minx"], feature["tile_miny"], feature["tile_maxx"], feature["tile_maxy"])
        assert tile[0] - 1e-6 <= box.xMinimum() and box.xMaximum() <= tile[2] + 1e-6
        assert tile[1] - 1e-6 <= box.yMinimum() and box.yMaximum() <= tile[3] + 1e-6
        assert box.width() <= 64 * px + 1e-6
    by_rank = {f["rank"]: f for f in hits.getFeatures()}
    for point in points.getFeatures():
        assert by_rank[point["rank"]].geometry().buffer(1e-6, 2).contains(point.geometry())


def test_dock_land_cover_detail_choice_sets_the_map_resolution(dock, raster_layer, dense_model_dir, cache_dir):
    dock.set_model_path(str(dense_model_dir / "image.onnx"))
    dock.tile_spin.setValue(64)
    dock.detail_combo.setCurrentIndex(dock.detail_combo.findData("dense"))
    dock.cells_spin.setValue(4)
    run_dock_task(dock, dock.start_landcover)
    assert dock.last_error == ""
    (raster,) = [layer for layer in _layers_named("rsclip land cover: ") if isinstance(layer, QgsRasterLayer)]
    px = raster_layer.rasterUnitsPerPixelX()
    assert raster.rasterUnitsPerPixelX() == pytest.approx(16 * px, rel=0.05)  # 64 px tiles / 4 cells
    assert raster.extent() == raster_layer.extent()  # exactly the raster, no overhang
    from qgis_plugin.settings import load_from_project

    saved = load_from_project()
    assert saved.detail == "dense" and saved.cells_per_tile == 4


def test_processing_detail_and_hit_points(provider, raster_path, dense_model_dir, tmp_path):
    import processing

    common = {"INPUT": str(raster_path), "MODEL": str(dense_model_dir / "rsclip.json"),
              "CACHE_FOLDER": str(tmp_path), "TILE_SIZE": 64}
    out = tmp_path / "hits.gpkg"
    result = processing.run("rsclip:textsearch", {**common, "QUERY": "green", "TOP_K": 3, "OUTPUT": str(out),
                                                  "HEATMAP": str(tmp_path / "heat.tif")})
    points = QgsVectorLayer(result["HIT_POINTS"], "points", "ogr")
    assert points.isValid() and points.featureCount() == 3
    heat = QgsRasterLayer(str(tmp_path / "heat.tif"), "heat", "gdal")
    source = QgsRasterLayer(str(raster_path), "r", "gdal")
    assert heat.rasterUnitsPerPixelX() == pytest.approx(8 * source.rasterUnitsPerPixelX(), rel=0.05)
    details = {"tile": 4, "dense": 1}  # MAP_DETAILS indices: 1 dense, 4 one class per tile
    sizes = {}
    for name, index in details.items():
        lc = tmp_path / f"lc_{name}.tif"
        processing.run("rsclip:landcover", {**common, "OUTPUT": str(lc), "DETAIL": index, "CELLS_PER_TILE": 1})
        layer = QgsRasterLayer(str(lc), name, "gdal")
        sizes[name] = layer.rasterUnitsPerPixelX()
    assert sizes["tile"] == pytest.approx(64 * source.rasterUnitsPerPixelX())
    assert sizes["dense"] == pytest.approx(64 * source.rasterUnitsPerPixelX(), rel=0.05)
    lc = tmp_path / "lc_fine.tif"
    processing.run("rsclip:landcover", {**common, "OUTPUT": str(lc), "DETAIL": 1, "CELLS_PER_TILE": 8})
    fine = QgsRasterLayer(str(lc), "fine", "gdal")
    assert fine.extent() == source.extent()
    assert fine.rasterUnitsPerPixelX() == pytest.approx(8 * source.rasterUnitsPerPixelX(), rel=0.05)
