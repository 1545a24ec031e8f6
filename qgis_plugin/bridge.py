"""Glue between QGIS objects and ``rsclip_core.inference``: layers -> paths, extents -> TilingConfig.

No tiling, preprocessing, output writing or model caching happens here: that is all
``rsclip_core.inference`` (models come from its ``cached_model``; errors are worded by `wording`).
Heavy imports (rsclip_core.inference, shapely) stay inside functions so the plugin loads without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsDistanceArea,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsUnitTypes,
)

from .settings import EXTENT_CANVAS, EXTENT_LAYER, EXTENT_SELECTION, DockSettings

METADATA_FILE = "rsclip.json"  # rsclip_core.spec.METADATA_FILE (spec is stdlib-only, imported lazily)
UNSAVED_OUTPUT_SETTING = "rsclip/unsaved_project_output_dir"  # QgsSettings: results of unsaved projects


MAP_DETAILS: List[Tuple[str, str]] = [
    ("", "Auto (dense if the model has it, else the tiles' own overlap blended)"),
    ("dense", "Dense: per-location embeddings in each tile"),
    ("windows", "Overlapping windows (50 % overlap), soft-voted"),
    ("dense+windows", "Dense + overlapping windows (finest, ~3x slower)"),
    ("tile", "One class per tile"),
]
"""The map detail choices of the dock and Processing: (``rsclip_core.inference.maps`` detail, label);
"" = automatic (``run_classify``/``run_search`` with ``detail=None``)."""
DEFAULT_CELLS_PER_TILE = 8  # rsclip_core.inference.maps.DEFAULT_CELLS_PER_TILE


def map_kwargs(detail: str, cells_per_tile: int) -> dict:
    """``run_classify``/``run_search`` keywords of a detail choice (see `MAP_DETAILS`)."""
    if detail not in {d for d, _ in MAP_DETAILS}:
        raise PluginInputError(f"unknown map detail {detail!r}")
    fine = detail != "tile" or int(cells_per_tile) != 1
    return {"detail": detail or None, "cells_per_tile": int(cells_per_tile) if fine else None}


class PluginInputError(ValueError):
    """Bad input chosen in the dock or a Processing dialog; the message names it."""


def raster_path(layer: Optional[QgsRasterLayer]) -> str:
    """File path of a GDAL raster layer (what rsclip_core reads)."""
    if layer is None or not layer.isValid():
        raise PluginInputError("no valid raster layer selected")
    if layer.providerType() != "gdal":
        raise PluginInputError(
            f"{layer.name()}: only file-based (GDAL) rasters are supported, not {layer.providerType()}"
        )
    path = layer.source().split("|")[0]
    if not os.path.exists(path):
        raise PluginInputError(f"{layer.name()}: {path} is not a local file")
    return path


def default_bands(band_count: int) -> List[int]:
    """The bands used when none are chosen, for the dock and Processing alike: 1,2,3 (or 1 if grey)."""
    return [1, 2, 3] if band_count >= 3 else [1]


def ground_metres_per_unit(layer: QgsRasterLayer) -> Optional[float]:
    """Ground metres per map unit at the centre of ``layer`` (ellipsoidal, like QgsDistanceArea).

    1.0 (about) for UTM-like CRSs; ~cos(latitude) for Web Mercator; None without a valid CRS.
    """
    crs = layer.crs()
    if not crs.isValid():
        return None
    center = layer.extent().center()
    distance = QgsDistanceArea()
    distance.setSourceCrs(crs, QgsProject.instance().transformContext())
    distance.setEllipsoid(crs.ellipsoidAcronym() or "WGS84")
    step = 1.0 if not crs.isGeographic() else 1e-4
    metres = distance.measureLine(QgsPointXY(center.x(), center.y()), QgsPointXY(center.x() + step, center.y()))
    return metres / step if metres > 0 else None


def units_note(layer: Optional[QgsRasterLayer]) -> str:
    """What "m/px" means for this raster when its map units are not ground metres ("" when they are)."""
    if layer is None or not layer.crs().isValid():
        return ""
    crs = layer.crs()
    if crs.isGeographic():
        return (f"{crs.authid()} is in degrees: the resolution in m/px is converted at the raster's centre; "
                "areas are ground areas")
    scale = ground_metres_per_unit(layer)
    unit = QgsUnitTypes.toString(crs.mapUnits())
    if scale is None or abs(scale - 1.0) < 0.02:
        return ""
    return (f"{crs.authid()}: 1 map {unit[:-1] if unit.endswith('s') else unit} is {scale:.2f} m on the ground here, "
            f"so 'm/px' is in map units (1 m/px = {scale:.2f} m/px on the ground); areas are ground areas")


def bundled_model_dir() -> Optional[Path]:
    """The default model shipped inside ``rsclip_core`` (wheel, checkout or plugin zip), or None."""
    try:
        from rsclip_core import resources
    except ImportError:  # rsclip_core not importable yet
        return None
    try:
        return resources.bundled_model_dir()
    except resources.ResourceMissingError:
        return None


def resolve_model_dir(path: str) -> Path:
    """A model directory from what the user picked (``rsclip_core.inference.resolve_model_dir``);
    empty means the bundled model. Errors are ``ValueError``s naming the model."""
    if not path:
        bundled = bundled_model_dir()
        if bundled is None:
            raise PluginInputError(
                "no bundled default model in this build: choose an exported rsclip model directory "
                "(or its image.onnx) with 'Browse…'"
            )
        return bundled
    from rsclip_core.inference import resolve_model_dir as resolve

    return resolve(path)


def model_summary(model_dir: Path) -> str:
    """Human-readable metadata of a model directory (reads rsclip.json only; no onnxruntime needed)."""
    from rsclip_core.spec import ModelMetadata

    meta = ModelMetadata.read(model_dir)
    lines = [
        f"<b>{meta.model_name}</b>",
        f"embedding {meta.embed_dim}-d · input {meta.image_size}px · context {meta.context_length} tokens",
    ]
    if meta.resolution_m:
        lines.append(f"trained at {meta.resolution_m:g} m/px")
    source = meta.source or {}
    for key in ("description", "licence", "license", "checkpoint", "teacher"):
        if key in source:
            lines.append(f"{key}: {source[key]}")
    lines.append(f"<small>{model_dir}</small>")
    return "<br>".join(lines)


def default_classes_file(model_dir: Optional[Path]) -> Optional[Path]:
    """The model's own class list (metadata ``default_classes``) if it has one, else rsclip's packaged
    default (``rsclip_core.resources``); None when neither is there."""
    from rsclip_core import resources
    from rsclip_core.spec import ModelMetadata

    if model_dir is not None:
        try:
            meta = ModelMetadata.read(model_dir)
        except ValueError:
            meta = None
        if meta is not None and meta.default_classes and (Path(model_dir) / meta.default_classes).is_file():
            return Path(model_dir) / meta.default_classes
    try:
        return resources.default_classes_file()
    except resources.ResourceMissingError:
        return None


def transform_rect(
    rect: QgsRectangle, src: QgsCoordinateReferenceSystem, dst: QgsCoordinateReferenceSystem
) -> Tuple[float, float, float, float]:
    """Bounding box of ``rect`` reprojected from ``src`` to ``dst`` as (minx, miny, maxx, maxy)."""
    if src.isValid() and dst.isValid() and src != dst:
        rect = QgsCoordinateTransform(src, dst, QgsProject.instance()).transformBoundingBox(rect)
    return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())


def geometries_to_shapely(
    geometries: Sequence[QgsGeometry], src: QgsCoordinateReferenceSystem, dst: QgsCoordinateReferenceSystem
) -> List[Any]:
    """QGIS polygons -> shapely geometries in the raster CRS (what TilingConfig.extent accepts)."""
    import shapely.wkb

    transform = None
    if src.isValid() and dst.isValid() and src != dst:
        transform = QgsCoordinateTransform(src, dst, QgsProject.instance())
    shapes = []
    for geometry in geometries:
        if geometry is None or geometry.isEmpty():
            continue
        geometry = QgsGeometry(geometry)
        if transform is not None:
            geometry.transform(transform)
        shapes.append(shapely.wkb.loads(bytes(geometry.asWkb())))
    return shapes


def dock_extent(settings: DockSettings, raster: QgsRasterLayer, canvas: Any = None) -> Any:
    """The processing extent the dock's settings describe, in the raster CRS (TilingConfig.extent)."""
    if settings.extent_mode == EXTENT_LAYER:
        return None
    if settings.extent_mode == EXTENT_CANVAS:
        if canvas is None:
            raise PluginInputError("processing extent 'visible canvas' needs a map canvas")
        return transform_rect(canvas.extent(), canvas.mapSettings().destinationCrs(), raster.crs())
    if settings.extent_mode == EXTENT_SELECTION:
        layer = QgsProject.instance().mapLayer(settings.mask_layer_id) if settings.mask_layer_id else None
        if layer is None:
            raise PluginInputError("processing extent 'selected polygons': choose a polygon layer")
        features = layer.selectedFeatures()
        if not features:
            raise PluginInputError(f"{layer.name()}: no features selected (select the polygons to process)")
        shapes = geometries_to_shapely([f.geometry() for f in features], layer.crs(), raster.crs())
        if not shapes:
            raise PluginInputError(f"{layer.name()}: the selected features have no geometry")
        return shapes
    raise PluginInputError(f"unknown processing extent {settings.extent_mode!r}")


def make_tiling(
    bands: Optional[Sequence[int]], resolution: float, tile_size: int, overlap_percent: float, extent: Any
) -> Any:
    """A validated ``rsclip_core.inference.TilingConfig`` (0 means 'model / raster default')."""
    from rsclip_core.inference import TilingConfig

    tiling = TilingConfig(
        tile_size=int(tile_size) if tile_size else None,
        overlap=float(overlap_percent) / 100.0,
        resolution=float(resolution) if resolution else None,
        bands=tuple(int(b) for b in bands) if bands else None,
        extent=extent,
    )
    return tiling.validate() if hasattr(tiling, "validate") else tiling


def cache_dir() -> Path:
    """Where embedding indexes are cached between queries and sessions."""
    env = os.environ.get("RSCLIP_QGIS_CACHE")
    base = Path(env) if env else Path(QgsApplication.qgisSettingsDirPath()) / "rsclip" / "index_cache"
    base.mkdir(parents=True, exist_ok=True)
    return base


def unsaved_project_output_dir() -> Path:
    """Results folder of projects not saved yet: the user's choice (QGIS setting), else the profile's."""
    chosen = str(QgsSettings().value(UNSAVED_OUTPUT_SETTING, "") or "")
    if chosen:
        return Path(chosen)
    return Path(QgsApplication.qgisSettingsDirPath()) / "rsclip" / "outputs"


def set_unsaved_project_output_dir(folder: str) -> None:
    """Remember ``folder`` for projects not saved yet ("" = the profile's default)."""
    QgsSettings().setValue(UNSAVED_OUTPUT_SETTING, folder)


def default_output_dir() -> Path:
    """``rsclip_outputs`` next to the project file, or `unsaved_project_output_dir` before it is saved."""
    home = QgsProject.instance().homePath()
    return Path(home) / "rsclip_outputs" if home else unsaved_project_output_dir()


def output_dir(settings_dir: str = "") -> Path:
    """Folder for result files: the dock's choice, else `default_output_dir` (created)."""
    folder = Path(settings_dir) if settings_dir else default_output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
