"""End-to-end runs shared by ``rsclip-map`` and the QGIS plugin: raster -> index -> files on disk.

Outputs are checked before any work (`writers.check_outputs`: never an input, never two on one
path, writable folders, exists without ``overwrite`` -> error), written to temp names and renamed
together when all are complete (a failure leaves none of them). The index is cached in
``cache_dir`` (default: the folder of the first output), so re-running a query or a class list on
the same raster only encodes text.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsclip_core.inference.advice import hit_percentiles
from rsclip_core.inference.errors import RsclipInputError
from rsclip_core.inference.index import CancelFn, EmbeddingIndex, ProgressFn, build_index
from rsclip_core.inference.landcover import (
    NODATA_CODE,
    UNCLASSIFIED_CODE,
    UNCLASSIFIED_COLOR,
    LandCoverClass,
    LandCoverResult,
    check_class_count,
    classify,
    load_classes,
    validate_classes,
)
from rsclip_core.inference.model import EmbeddingModel, load_model
from rsclip_core.inference.search import _check_query, hit_points, score_heatmap, score_heatmap_fine, search
from rsclip_core.inference.tiling import TilingConfig
from rsclip_core.inference.writers import check_outputs, staged_outputs, write_cog, write_gpkg


@dataclass
class SearchRun:
    """Result of `run_search`: the hits and where they were written."""

    hits: Any  # GeoDataFrame rank, score, query, geometry
    index: EmbeddingIndex
    out_gpkg: Path | None = None
    heatmap_tif: Path | None = None


@dataclass
class ClassifyRun:
    """Result of `run_classify`: output paths and per-class statistics."""

    out_tif: Path
    result: LandCoverResult
    index: EmbeddingIndex
    polygons_gpkg: Path | None = None
    confidence_tif: Path | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IndexRun:
    """Result of `run_index`: the index and its file."""

    index: EmbeddingIndex
    index_path: Path
    reused: bool


def _model(model: EmbeddingModel | None, model_dir: str | os.PathLike | None) -> EmbeddingModel:
    return model if model is not None else load_model(model_dir)


def _cache_dir(cache_dir: str | os.PathLike | None, *outputs: Path | None) -> Path | None:
    if cache_dir is not None:
        return Path(cache_dir)
    for out in outputs:
        if out is not None:
            return out.parent
    return None


def _inputs(raster: str | os.PathLike, tiling: TilingConfig | None, *files: Any) -> list[Path]:
    """Every file a run reads that an output must never replace."""
    found = [Path(raster)]
    if tiling is not None and isinstance(tiling.extent, (str, os.PathLike)):
        found.append(Path(tiling.extent))
    found += [Path(f) for f in files if isinstance(f, (str, os.PathLike))]
    return found


def run_index(raster: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
              tiling: TilingConfig | None = None, cache_dir: str | os.PathLike | None = None,
              overwrite: bool = False, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
              model: EmbeddingModel | None = None) -> IndexRun:
    """Build (or find) the embedding index of ``raster`` in ``cache_dir`` (default: current folder)."""
    from rsclip_core.inference.index import find_cached_index

    model = _model(model, model_dir)
    folder = Path(cache_dir) if cache_dir is not None else Path.cwd()
    path, cached = find_cached_index(raster, model, tiling, folder)
    if cached is not None and not overwrite:
        return IndexRun(cached, path, reused=True)
    if cached is not None:
        path.unlink()
    index = build_index(raster, model, tiling, cache_dir=folder, progress=progress, cancel=cancel)
    return IndexRun(index, path, reused=False)


def run_search(raster: str | os.PathLike, query: str, *, model_dir: str | os.PathLike | None = None,
               tiling: TilingConfig | None = None, top_k: int = 50,
               out_gpkg: str | os.PathLike | None = None, heatmap_tif: str | os.PathLike | None = None,
               cache_dir: str | os.PathLike | None = None, overwrite: bool = False,
               progress: ProgressFn | None = None, cancel: CancelFn | None = None,
               model: EmbeddingModel | None = None, suppress_overlap: bool = True,
               templates: Sequence[str] | None = None, detail: str | None = None,
               cells_per_tile: int | None = None, map_resolution: float | None = None) -> SearchRun:
    """Rank the tiles of ``raster`` against ``query``; write hits (GPKG) and a heat-map (COG).

    ``templates``: optional prompt templates to ensemble the query over (default: the query as is).
    Hits are localised inside their tiles when the model has dense embeddings (GPKG layers
    ``hits``: tight boxes, ``hit_points``: best-match points). ``detail`` (see
    `rsclip_core.inference.maps`; default ``dense`` with dense embeddings, else ``tile``) and
    ``cells_per_tile``/``map_resolution`` choose the heat-map's resolution; ``tile`` without a
    resolution keeps one cell per tile stride.
    """
    from rsclip_core.inference.maps import check_detail

    query = _check_query(query)
    if detail is not None:
        check_detail(detail)
        tiling = _tiling_for(detail, tiling)
    if int(top_k) < 1:
        raise RsclipInputError(f"must be >= 1, got {top_k}", field="top_k")
    checked = check_outputs({"output": out_gpkg, "heatmap": heatmap_tif}, overwrite=overwrite,
                            inputs=_inputs(raster, tiling))
    gpkg, heat = checked["output"], checked["heatmap"]
    model = _model(model, model_dir)
    index = build_index(raster, model, tiling, cache_dir=_cache_dir(cache_dir, gpkg, heat),
                        progress=progress, cancel=cancel)
    hits = search(index, model, query, top_k=int(top_k), suppress_overlap=suppress_overlap, templates=templates)
    hits["percentile"] = hit_percentiles(hits, index, model, query, templates)  # among all tiles
    if detail is None:
        detail = "dense" if index.dense is not None else "tile"
    with staged_outputs() as staging:
        if gpkg is not None:
            write_gpkg(gpkg, hits, layer="hits", staging=staging, more_layers={"hit_points": hit_points(hits)})
        if heat is not None:
            if detail == "tile" and cells_per_tile is None and map_resolution is None:
                grid, transform = score_heatmap(index, model, query, templates=templates), index.cell_transform
            else:
                grid, transform = score_heatmap_fine(index, query_text(model, query, templates), detail=detail,
                                                     cells_per_tile=cells_per_tile, map_resolution=map_resolution)
            write_cog(heat, grid, transform, index.crs_wkt, nodata=float("nan"),
                      tags={"query": query, "model": model.metadata.model_name, "raster": str(raster)},
                      band_description=f"similarity to '{query}'", resampling="AVERAGE", staging=staging)
    return SearchRun(hits=hits, index=index, out_gpkg=gpkg, heatmap_tif=heat)


def _tiling_for(detail: str, tiling: TilingConfig | None) -> TilingConfig:
    """The tiling a map detail needs: ``windows`` details overlap tiles (0.5 unless asked otherwise)."""
    import dataclasses

    from rsclip_core.inference.maps import detail_overlap

    tiling = tiling if tiling is not None else TilingConfig()
    overlap = detail_overlap(detail, tiling.overlap)
    return tiling if overlap == tiling.overlap else dataclasses.replace(tiling, overlap=overlap)


def query_text(model: EmbeddingModel, query: str, templates: Sequence[str] | None) -> np.ndarray:
    from rsclip_core.inference.search import query_embedding

    return query_embedding(model, query, templates)


def landcover_polygons(result: LandCoverResult) -> Any:
    """Dissolved polygons per class (and unclassified) with area, as a GeoDataFrame."""
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    codes = result.codes
    records: dict[int, list] = {}
    for geom, value in shapes(codes, mask=codes != NODATA_CODE, transform=result.transform, connectivity=4):
        records.setdefault(int(value), []).append(shape(geom))
    names = {i + 1: c.name for i, c in enumerate(result.classes)}
    names[UNCLASSIFIED_CODE] = "unclassified"
    colors = {i + 1: c.color for i, c in enumerate(result.classes)}
    colors[UNCLASSIFIED_CODE] = UNCLASSIFIED_COLOR
    from shapely import union_all

    rows = sorted(records)
    clip = None
    if result.region_bounds is not None:  # edge cells hang past the region by < 1 cell: cut them
        from shapely.geometry import box

        clip = box(*result.region_bounds)
    geometries = [union_all(records[r]) if clip is None else union_all(records[r]).intersection(clip) for r in rows]
    frame = gpd.GeoDataFrame(
        {
            "class_id": np.array(rows, dtype=np.int32),
            "class_name": [names.get(r, str(r)) for r in rows],
            "color": ["#{:02x}{:02x}{:02x}".format(*colors.get(r, (0, 0, 0))) for r in rows],
        },
        geometry=geometries,
        crs=result.crs_wkt if result.crs_wkt else None,
    )
    with warnings.catch_warnings():  # geographic CRS: 'area' is in deg^2 on purpose, area_m2 is the real one
        warnings.simplefilter("ignore", UserWarning)
        frame["area"] = frame.geometry.area  # map units^2 (pixels^2 without CRS)
    frame["area_m2"] = _area_m2(frame)
    mapped = float(frame["area"].sum())
    frame["fraction"] = frame["area"] / mapped if mapped > 0 else 0.0
    conf = result.confidence
    frame["mean_confidence"] = [float(np.nanmean(conf[codes == r])) for r in rows]
    return frame


def _area_m2(frame: Any) -> Any:
    """True ground areas in square metres, on the ellipsoid of the frame's CRS (as QgsDistanceArea does).

    Geometries are transformed to the CRS's geographic CRS and measured geodesically with pyproj's
    ``Geod.geometry_area_perimeter``, so Web Mercator (EPSG:3857) or any other projection that
    distorts areas still gives ground areas. NaN without a CRS.
    """
    if frame.crs is None or frame.empty:
        return np.full(len(frame), np.nan)
    from pyproj import Geod

    crs = frame.crs
    geographic = crs.geodetic_crs or crs
    ellipsoid = geographic.ellipsoid
    if ellipsoid is not None and ellipsoid.inverse_flattening:
        geod = Geod(a=ellipsoid.semi_major_metre, rf=ellipsoid.inverse_flattening)
    elif ellipsoid is not None:
        geod = Geod(a=ellipsoid.semi_major_metre, b=ellipsoid.semi_minor_metre)
    else:
        geod = Geod(ellps="WGS84")
    # geopandas keeps x = longitude, y = latitude whatever the CRS's axis order (always_xy).
    lonlat = frame.geometry.to_crs(geographic) if geographic != crs else frame.geometry
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) if g is not None and not g.is_empty else 0.0
                     for g in lonlat], dtype=np.float64)


def _colormap(classes: Sequence[LandCoverClass]) -> dict[int, Sequence[int]]:
    cmap: dict[int, Sequence[int]] = {i: (0, 0, 0, 0) for i in range(256)}
    for i, c in enumerate(classes):
        cmap[i + 1] = tuple(c.color) + (255,)
    cmap[UNCLASSIFIED_CODE] = UNCLASSIFIED_COLOR + (255,)
    return cmap


def run_classify(raster: str | os.PathLike, classes: Any, *, model_dir: str | os.PathLike | None = None,
                 tiling: TilingConfig | None = None, out_tif: str | os.PathLike,
                 polygons_gpkg: str | os.PathLike | None = None,
                 confidence_tif: str | os.PathLike | None = None, threshold: float | None = None,
                 cache_dir: str | os.PathLike | None = None, overwrite: bool = False,
                 progress: ProgressFn | None = None, cancel: CancelFn | None = None,
                 model: EmbeddingModel | None = None, detail: str | None = None,
                 cells_per_tile: int | None = None, map_resolution: float | None = None) -> ClassifyRun:
    """Zero-shot land cover of ``raster``: class COG (+ confidence COG, + dissolved polygons GPKG).

    ``classes`` is a list of `LandCoverClass` or a class file path (YAML/JSON). ``detail``
    (`rsclip_core.inference.maps.DETAILS`) and ``cells_per_tile`` (default 8) / ``map_resolution``
    (map units per cell) choose how fine the map is; ``tile`` without a resolution is one cell per
    tile, ``windows`` details overlap tiles by 0.5 unless ``tiling`` overlaps them already. Default
    (``None``): `DEFAULT_DETAIL` when the model has dense embeddings, else ``windows`` blending of
    the tiling's own overlap (the tiling is left as given).
    """
    from rsclip_core.inference.maps import DEFAULT_DETAIL, check_detail
    classes_file = classes if isinstance(classes, (str, os.PathLike)) else None
    if classes_file is not None:
        classes = load_classes(classes_file)
    classes = list(classes)
    validate_classes(classes)
    check_class_count(classes)  # refused before any work; classify() warns about the threshold
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise RsclipInputError(f"must be a probability in [0, 1], got {threshold}", field="threshold")
    if out_tif is None:
        raise RsclipInputError("a GeoTIFF path for the class map is required", field="output")
    checked = check_outputs({"output": out_tif, "confidence": confidence_tif, "polygons": polygons_gpkg},
                            overwrite=overwrite, inputs=_inputs(raster, tiling, classes_file))
    tif, conf_path, gpkg = checked["output"], checked["confidence"], checked["polygons"]
    assert tif is not None  # out_tif is required (checked above)
    model = _model(model, model_dir)
    if detail is None:  # automatic: never changes the tiling asked for (a prebuilt index is reused)
        detail = DEFAULT_DETAIL if model.has_dense else "windows"
    else:
        check_detail(detail)
        tiling = _tiling_for(detail, tiling)
    if detail.startswith("dense") and not model.has_dense:
        raise RsclipInputError(f"{model.model_dir}: the model has no dense embeddings (its image graph has no "
                               "'dense' output); use detail 'windows' or 'tile'", field="detail")
    index = build_index(raster, model, tiling, cache_dir=_cache_dir(cache_dir, tif),
                        progress=progress, cancel=cancel)
    result = classify(index, model, classes, threshold=threshold, detail=detail, cells_per_tile=cells_per_tile,
                      map_resolution=map_resolution)
    class_json = json.dumps([c.to_dict() for c in classes], ensure_ascii=False)
    band_tags = {f"CLASS_{i + 1}": c.name for i, c in enumerate(classes)}
    band_tags.update({f"CLASS_{NODATA_CODE}": "nodata", f"CLASS_{UNCLASSIFIED_CODE}": "unclassified",
                      "CLASSES": class_json})
    tags = {"model": model.metadata.model_name, "raster": str(raster), "detail": detail,
            "threshold": "" if threshold is None else str(threshold), "index_key": index.key}
    with staged_outputs() as staging:
        write_cog(tif, result.codes, result.transform, result.crs_wkt, nodata=NODATA_CODE, staging=staging,
                  colormap=_colormap(classes), tags=tags, band_tags=band_tags, band_description="land cover class")
        if conf_path is not None:
            write_cog(conf_path, result.confidence, result.transform, result.crs_wkt, nodata=float("nan"),
                      tags=tags, band_description="class probability", resampling="AVERAGE", staging=staging)
        if gpkg is not None:
            write_gpkg(gpkg, landcover_polygons(result), layer="landcover", staging=staging)
    return ClassifyRun(out_tif=tif, result=result, index=index, polygons_gpkg=gpkg,
                       confidence_tif=conf_path, stats=result.class_stats())
