"""Torch-free raster inference: exported model dir -> tiles -> embeddings -> search / land cover.

Runs with numpy 1.24+ or 2.x, onnxruntime, rasterio, geopandas, shapely and tokenizers only, so
the QGIS plugin and ``rsclip-map`` call exactly these functions. Importing this package never
imports torch.

    model = load_model("models/rsclip-s0")
    index = build_index("scene.tif", model, TilingConfig(tile_size=224, overlap=0.25))
    hits = search(index, model, "tennis courts", top_k=20)          # GeoDataFrame
    result = classify(index, model, load_classes())                 # LandCoverResult, one class per tile
    fine = classify(index, model, load_classes(), detail="dense")   # per-location, 8 cells per tile
    run_classify("scene.tif", default_classes_path(), out_tif="lc.tif", polygons_gpkg="lc.gpkg")
    jobs = plan_classify_batch(["a/s.tif", "b/s.tif"], "maps", {...})  # maps/a/..., maps/b/...
    results = run_batch("classify", jobs, workers=2)                   # list[JobResult]

Errors name a *field* (``exc.field == "bands"``); front-ends word them with their own labels via
``describe_error(exc, {"bands": "--bands"})`` (see ``errors.FIELDS``).
"""

from __future__ import annotations

from rsclip_core.inference.batch import (
    BatchInterrupted,
    BatchJob,
    JobResult,
    classify_outputs,
    plan_classify_batch,
    plan_index_batch,
    run_batch,
    run_job,
)
from rsclip_core.inference.errors import (
    FIELDS,
    USER_ERRORS,
    InvalidModelError,
    OutputExistsError,
    RsclipCancelled,
    RsclipError,
    RsclipFileNotFoundError,
    RsclipInputError,
    RsclipWarning,
    describe_error,
)
from rsclip_core.inference.index import EmbeddingIndex, build_index, find_cached_index
from rsclip_core.inference.landcover import (
    LandCoverClass,
    LandCoverResult,
    classify,
    default_classes_path,
    load_classes,
    parse_classes,
    save_classes,
)
from rsclip_core.inference.model import EmbeddingModel, default_model_dir, describe_model, load_model
from rsclip_core.inference.model_cache import MODEL_CACHE, ModelCache, cached_model, resolve_model_dir
from rsclip_core.inference.raster import RasterSource, list_rasters
from rsclip_core.inference.runs import (
    ClassifyRun,
    IndexRun,
    SearchRun,
    landcover_polygons,
    run_classify,
    run_index,
    run_search,
)
from rsclip_core.inference.maps import DETAILS, MapGrid, map_grid
from rsclip_core.inference.search import hit_points, score_heatmap, score_heatmap_fine, search
from rsclip_core.inference.tiling import TileGrid, TilingConfig, plan_grid

__all__ = [
    "BatchInterrupted",
    "DETAILS",
    "MapGrid",
    "BatchJob",
    "ClassifyRun",
    "EmbeddingIndex",
    "EmbeddingModel",
    "FIELDS",
    "IndexRun",
    "InvalidModelError",
    "JobResult",
    "LandCoverClass",
    "LandCoverResult",
    "MODEL_CACHE",
    "ModelCache",
    "OutputExistsError",
    "RasterSource",
    "RsclipCancelled",
    "RsclipError",
    "RsclipFileNotFoundError",
    "RsclipInputError",
    "RsclipWarning",
    "SearchRun",
    "TileGrid",
    "TilingConfig",
    "USER_ERRORS",
    "build_index",
    "cached_model",
    "classify",
    "classify_outputs",
    "default_classes_path",
    "default_model_dir",
    "describe_error",
    "describe_model",
    "find_cached_index",
    "hit_points",
    "landcover_polygons",
    "list_rasters",
    "load_classes",
    "load_model",
    "map_grid",
    "parse_classes",
    "plan_classify_batch",
    "plan_grid",
    "plan_index_batch",
    "resolve_model_dir",
    "run_batch",
    "run_classify",
    "run_index",
    "run_job",
    "run_search",
    "save_classes",
    "score_heatmap",
    "score_heatmap_fine",
    "search",
]
