"""Torch-free raster inference: exported model dir -> tiles -> embeddings -> search / land cover.

Runs with numpy 1.24+ or 2.x, onnxruntime, rasterio, geopandas, shapely and tokenizers only, so
the QGIS plugin and ``rsclip-map`` call exactly these functions. Importing this package never
imports torch.

    model = load_model("models/rsclip-s0")
    index = build_index("scene.tif", model, TilingConfig(tile_size=224, overlap=0.25))
    hits = search(index, model, "tennis courts", top_k=20)          # GeoDataFrame
    result = classify(index, model, load_classes())                 # LandCoverResult
    run_classify("scene.tif", default_classes_path(), out_tif="lc.tif", polygons_gpkg="lc.gpkg")
"""

from __future__ import annotations

from rsclip_core.inference.errors import (
    InvalidModelError,
    OutputExistsError,
    RsclipCancelled,
    RsclipError,
    RsclipFileNotFoundError,
    RsclipInputError,
    RsclipWarning,
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
from rsclip_core.inference.search import score_heatmap, search
from rsclip_core.inference.tiling import TileGrid, TilingConfig, plan_grid

__all__ = [
    "ClassifyRun",
    "EmbeddingIndex",
    "EmbeddingModel",
    "IndexRun",
    "InvalidModelError",
    "LandCoverClass",
    "LandCoverResult",
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
    "build_index",
    "classify",
    "default_classes_path",
    "default_model_dir",
    "describe_model",
    "find_cached_index",
    "landcover_polygons",
    "list_rasters",
    "load_classes",
    "load_model",
    "parse_classes",
    "plan_grid",
    "run_classify",
    "run_index",
    "run_search",
    "save_classes",
    "score_heatmap",
    "search",
]
