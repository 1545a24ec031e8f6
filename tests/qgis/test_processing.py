"""The Processing algorithms run through processing.run (toolbox / batch / model builder path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsProcessingException,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)



def _common(raster_path: Path, model_dir: Path, cache: Path) -> dict:
    return {"INPUT": str(raster_path), "MODEL": str(model_dir / "rsclip.json"), "CACHE_FOLDER": str(cache)}


def test_text_search_algorithm(provider, raster_path, model_dir, tmp_path):
    import processing

    out = tmp_path / "hits.gpkg"
    heat = tmp_path / "heat.tif"
    params = _common(raster_path, model_dir, tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    params.update(
        {"QUERY": "green forest", "TOP_K": 7, "OUTPUT": str(out), "HEATMAP": str(heat), "OVERLAP": 25}
    )
    result = processing.run("rsclip:textsearch", params)
    assert Path(result["OUTPUT"]) == out and out.is_file()
    layer = QgsVectorLayer(str(out), "hits", "ogr")
    raster = QgsRasterLayer(str(raster_path), "r", "gdal")
    assert layer.isValid() and layer.featureCount() == 7
    assert layer.crs() == raster.crs()
    scores = [f["score"] for f in sorted(layer.getFeatures(), key=lambda f: f["rank"])]
    assert scores == sorted(scores, reverse=True)
    heat_layer = QgsRasterLayer(str(heat), "heat", "gdal")
    assert heat_layer.isValid() and heat_layer.crs() == raster.crs()
    assert list((tmp_path / "cache").glob("*.rsclip-index.npz"))


def test_build_index_then_land_cover_reuses_it(provider, raster_path, model_dir, tmp_path):
    import processing

    index_folder = tmp_path / "index"
    built = processing.run(
        "rsclip:buildindex",
        {"INPUT": str(raster_path), "MODEL": str(model_dir), "OUTPUT_FOLDER": str(index_folder)},
    )
    index_file = Path(built["INDEX_FILE"])
    assert index_file.is_file() and index_file.parent == index_folder and built["TILES"] > 0
    stamp = index_file.stat().st_mtime_ns

    classes = tmp_path / "classes.yaml"
    classes.write_text(
        "classes:\n"
        "  - {name: water, prompts: [water, a lake], color: '#0000ff'}\n"
        "  - {name: vegetation, prompts: [green vegetation, forest], color: '#00ff00'}\n"
        "  - {name: bare, prompts: [red bare soil], color: '#ff0000'}\n"
    )
    out = tmp_path / "lc.tif"
    polygons = tmp_path / "lc.gpkg"
    result = processing.run(
        "rsclip:landcover",
        {
            "INPUT": str(raster_path),
            "MODEL": str(model_dir),
            "CACHE_FOLDER": str(index_folder),
            "CLASSES": str(classes),
            "OUTPUT": str(out),
            "POLYGONS": str(polygons),
        },
    )
    assert index_file.stat().st_mtime_ns == stamp and len(list(index_folder.glob("*.npz"))) == 1
    raster = QgsRasterLayer(str(raster_path), "r", "gdal")
    lc = QgsRasterLayer(result["OUTPUT"], "lc", "gdal")
    assert lc.isValid() and lc.crs() == raster.crs()
    table = {
        entry.value: entry.color.name()
        for entry in QgsPalettedRasterRenderer.colorTableToClassData(lc.dataProvider().colorTable(1))
    }
    assert table[1] == "#0000ff" and table[2] == "#00ff00" and table[3] == "#ff0000"
    poly = QgsVectorLayer(result["POLYGONS"], "poly", "ogr")
    assert poly.isValid() and poly.crs() == raster.crs()
    assert {f["class_name"] for f in poly.getFeatures()} <= {"water", "vegetation", "bare", "unclassified"}


def test_mask_and_extent_parameters(provider, raster_path, model_dir, tmp_path):
    import processing

    raster = QgsRasterLayer(str(raster_path), "r", "gdal")
    full = raster.extent()
    right = QgsRectangle(full.center().x(), full.yMinimum(), full.xMaximum(), full.yMaximum())
    # Mask in another CRS (WGS 84): the algorithm reprojects it to the raster CRS.
    mask = QgsVectorLayer("Polygon?crs=EPSG:4326", "mask", "memory")
    from qgis.core import QgsCoordinateTransform

    to_wgs = QgsCoordinateTransform(
        raster.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance()
    )
    geometry = QgsGeometry.fromRect(right)
    geometry.transform(to_wgs)
    feature = QgsFeature()
    feature.setGeometry(geometry)
    mask.dataProvider().addFeatures([feature])
    out = tmp_path / "masked.gpkg"
    params = _common(raster_path, model_dir, tmp_path)
    params.update({"QUERY": "blue water", "TOP_K": 20, "MASK": mask, "OUTPUT": str(out)})
    processing.run("rsclip:textsearch", params)
    hits = QgsVectorLayer(str(out), "hits", "ogr")
    assert hits.featureCount() > 0
    grown = QgsRectangle(right)
    grown.grow(full.width() * 0.02)  # reprojection of the mask bends its edges slightly
    for f in hits.getFeatures():
        assert f.geometry().boundingBox().intersects(grown)
        assert f.geometry().boundingBox().xMaximum() > right.xMinimum()

    left = QgsRectangle(full.xMinimum(), full.yMinimum(), full.center().x(), full.yMaximum())
    out2 = tmp_path / "extent.gpkg"
    params.update(
        {
            "MASK": None,
            "EXTENT": f"{left.xMinimum()},{left.xMaximum()},{left.yMinimum()},"
            f"{left.yMaximum()} [{raster.crs().authid()}]",
            "OUTPUT": str(out2),
        }
    )
    processing.run("rsclip:textsearch", params)
    hits2 = QgsVectorLayer(str(out2), "hits", "ogr")
    assert hits2.featureCount() > 0
    for f in hits2.getFeatures():
        assert f.geometry().boundingBox().xMinimum() < left.xMaximum()


def test_bad_input_is_a_processing_error(provider, raster_path, model_dir, tmp_path):
    import processing

    params = _common(raster_path, model_dir, tmp_path)
    params.update({"QUERY": "green", "BANDS": [1, 2], "OUTPUT": str(tmp_path / "x.gpkg")})
    with pytest.raises(QgsProcessingException, match="BANDS"):
        processing.run("rsclip:textsearch", params)
    params.update({"BANDS": None, "MODEL": str(tmp_path)})
    with pytest.raises(QgsProcessingException, match="^MODEL: .*not an exported rsclip model"):
        processing.run("rsclip:textsearch", params)
    # rsclip_core's errors name a field; Processing words it with the parameter name, not a CLI flag
    params.update({"MODEL": str(model_dir), "TILE_SIZE": 3})
    with pytest.raises(QgsProcessingException, match="^TILE_SIZE: must be an integer >= 8") as bad:
        processing.run("rsclip:textsearch", params)
    assert "--" not in str(bad.value)


def test_results_loaded_from_processing_are_styled(provider, raster_path, model_dir, tmp_path):
    import processing
    from qgis.core import QgsGraduatedSymbolRenderer

    params = _common(raster_path, model_dir, tmp_path)
    params.update({"QUERY": "green", "TOP_K": 5, "OUTPUT": str(tmp_path / "styled.gpkg")})
    result = processing.runAndLoadResults("rsclip:textsearch", params)
    hits = QgsProject.instance().mapLayer(result["OUTPUT"]) or next(
        layer
        for layer in QgsProject.instance().mapLayers().values()
        if layer.source().startswith(str(tmp_path))
    )
    assert isinstance(hits.renderer(), QgsGraduatedSymbolRenderer) and hits.labelsEnabled()

    params = _common(raster_path, model_dir, tmp_path)
    params.update({"OUTPUT": str(tmp_path / "styled_lc.tif"), "POLYGONS": str(tmp_path / "styled_lc.gpkg")})
    processing.runAndLoadResults("rsclip:landcover", params)
    rasters = [
        layer
        for layer in QgsProject.instance().mapLayers().values()
        if layer.source().endswith("styled_lc.tif")
    ]
    assert len(rasters) == 1
    assert isinstance(rasters[0].renderer(), QgsPalettedRasterRenderer)
    assert "water" in {c.label for c in rasters[0].renderer().classes()}


def test_model_builder_chain_reuses_the_index(provider, raster_path, model_dir, tmp_path, cache_dir):
    """Build embedding index -> Text search, wired in a Processing model (the model builder's format)."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
        QgsProcessingParameterString,
    )

    source = QgsProcessingModelChildParameterSource
    model = QgsProcessingModelAlgorithm("rsclip chain", "tests")
    model.addModelParameter(
        QgsProcessingParameterRasterLayer("raster", "Raster"), QgsProcessingModelParameter("raster")
    )
    model.addModelParameter(
        QgsProcessingParameterString("query", "Query"), QgsProcessingModelParameter("query")
    )
    model.addModelParameter(
        QgsProcessingParameterFile("model", "Model"), QgsProcessingModelParameter("model")
    )

    index = QgsProcessingModelChildAlgorithm("rsclip:buildindex")
    index.setChildId("index")
    index.addParameterSources("INPUT", [source.fromModelParameter("raster")])
    index.addParameterSources("MODEL", [source.fromModelParameter("model")])
    index.addParameterSources("OUTPUT_FOLDER", [source.fromStaticValue(str(tmp_path / "index"))])
    model.addChildAlgorithm(index)

    search = QgsProcessingModelChildAlgorithm("rsclip:textsearch")
    search.setChildId("search")
    search.addParameterSources("INPUT", [source.fromModelParameter("raster")])
    search.addParameterSources("MODEL", [source.fromModelParameter("model")])
    search.addParameterSources("QUERY", [source.fromModelParameter("query")])
    search.addParameterSources("TOP_K", [source.fromStaticValue(6)])
    search.addParameterSources("CACHE_FOLDER", [source.fromChildOutput("index", "OUTPUT_FOLDER")])
    output = QgsProcessingModelOutput("hits", "Hits")
    output.setChildId("search")
    output.setChildOutputName("OUTPUT")
    search.setModelOutputs({"hits": output})
    model.addChildAlgorithm(search)
    assert model.dependentChildAlgorithms("index") == {"search"}

    out = tmp_path / "model_hits.gpkg"
    result = processing.run(
        model,
        {
            "raster": str(raster_path),
            "query": "green",
            "model": str(model_dir / "rsclip.json"),
            "search:hits": str(out),
        },
    )
    hits = QgsVectorLayer(result["search:hits"], "hits", "ogr")
    assert hits.isValid() and hits.featureCount() == 6
    assert len(list((tmp_path / "index").glob("*.rsclip-index.npz"))) == 1
    # The search found the index through the wired CACHE_FOLDER, not the plugin's own cache.
    assert not list(cache_dir.glob("*.npz"))
