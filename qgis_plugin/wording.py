"""How the plugin names the fields of ``rsclip_core.inference`` errors (no qgis, no Qt imports).

Inference errors carry a field (``bands``, ``output``, ...; see
``rsclip_core.inference.errors.FIELDS``); the dock shows its widget labels, the Processing
algorithms their parameter names, so a QGIS user never reads a command-line flag.
"""

from __future__ import annotations

from typing import Dict, Optional

DOCK_LABELS: Dict[str, str] = {
    "raster": "Raster layer",
    "model": "Model",
    "classes": "Classes",
    "output": "Output",
    "polygons": "Land-cover polygons",
    "confidence": "Confidence raster",
    "heatmap": "Heat-map",
    "out_dir": "Output folder",
    "cache_dir": "Index cache folder",
    "overwrite": "overwrite",
    "bands": "Bands (R, G, B)",
    "tile_size": "Tile size",
    "overlap": "Overlap",
    "resolution": "Resolution",
    "extent": "Processing extent",
    "batch_size": "Batch size",
    "query": "Query",
    "top_k": "Number of hits",
    "threshold": "Minimum confidence",
    "workers": "Workers",
    "detail": "Map detail",
    "cells_per_tile": "Cells per tile",
    "map_resolution": "Map resolution",
}
"""Field -> label in the rsclip dock."""

PROCESSING_LABELS: Dict[str, str] = {
    "raster": "INPUT",
    "model": "MODEL",
    "classes": "CLASSES",
    "output": "OUTPUT",
    "polygons": "POLYGONS",
    "confidence": "CONFIDENCE",
    "heatmap": "HEATMAP",
    "out_dir": "OUTPUT_FOLDER",
    "cache_dir": "CACHE_FOLDER",
    "overwrite": "overwrite",
    "bands": "BANDS",
    "tile_size": "TILE_SIZE",
    "overlap": "OVERLAP",
    "resolution": "RESOLUTION",
    "extent": "EXTENT",
    "batch_size": "batch size",
    "query": "QUERY",
    "top_k": "TOP_K",
    "threshold": "THRESHOLD",
    "workers": "workers",
    "detail": "DETAIL",
    "cells_per_tile": "CELLS_PER_TILE",
    "map_resolution": "MAP_RESOLUTION",
}
"""Field -> Processing parameter name (what ``processing.run(..., {NAME: ...})`` takes)."""


def dock_message(exc: BaseException) -> str:
    """The error for the dock's status label, worded with its labels; details (e.g. the installer's
    offline advice) stay on the lines after the first, which alone goes to the message bar."""
    worded = getattr(exc, "worded", None)
    text = worded(DOCK_LABELS) if callable(worded) else str(exc).strip()
    return text or type(exc).__name__


def processing_message(exc: BaseException) -> str:
    """One line for a ``QgsProcessingException``."""
    return _describe(exc, PROCESSING_LABELS)


def _describe(exc: BaseException, labels: Optional[Dict[str, str]]) -> str:
    try:
        from rsclip_core.inference.errors import describe_error
    except ImportError:  # rsclip_core not importable yet (missing dependencies)
        lines = str(exc).strip().splitlines()
        return lines[0] if lines else type(exc).__name__
    return describe_error(exc, labels)
