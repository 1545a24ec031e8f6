"""Dock settings, persisted in the QGIS project (``QgsProject.writeEntry``/``readEntry``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, List, Optional

SCOPE = "rsclip"
KEY = "dock_settings"

EXTENT_LAYER = "layer"
EXTENT_CANVAS = "canvas"
EXTENT_SELECTION = "selection"
EXTENT_MODES = (EXTENT_LAYER, EXTENT_CANVAS, EXTENT_SELECTION)


@dataclass
class DockSettings:
    """Everything the dock remembers between sessions of a project."""

    raster_layer_id: str = ""
    bands: List[int] = field(default_factory=lambda: [1, 2, 3])
    resolution: float = 0.0  # m/px; 0 = native
    tile_size: int = 0  # px; 0 = the model's image size
    overlap_percent: float = 0.0
    extent_mode: str = EXTENT_LAYER
    mask_layer_id: str = ""
    model_path: str = ""  # "" = bundled default model
    output_dir: str = ""  # "" = next to the project (or a temp folder)
    query: str = ""
    top_k: int = 20
    threshold: float = 0.0  # 0 = no "unclassified" threshold
    classes: Optional[List[dict]] = None  # None = the default class list
    detail: str = ""  # "" = auto; else rsclip_core.inference.maps detail (bridge.MAP_DETAILS)
    cells_per_tile: int = 8  # output map cells across one tile

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DockSettings":
        """Tolerant reader: unknown keys are dropped, bad JSON gives the defaults."""
        try:
            data: Any = json.loads(text) if text else {}
        except json.JSONDecodeError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        known = {f.name for f in fields(cls)}
        settings = cls(**{k: v for k, v in data.items() if k in known})
        if settings.extent_mode not in EXTENT_MODES:
            settings.extent_mode = EXTENT_LAYER
        return settings


def save_to_project(settings: DockSettings, project: Any = None) -> None:
    """Store the settings in the project (saved with the .qgz)."""
    from qgis.core import QgsProject

    project = project or QgsProject.instance()
    project.writeEntry(SCOPE, KEY, settings.to_json())


def load_from_project(project: Any = None) -> DockSettings:
    """The project's stored settings, or the defaults when it has none."""
    from qgis.core import QgsProject

    project = project or QgsProject.instance()
    text, found = project.readEntry(SCOPE, KEY, "")
    return DockSettings.from_json(text if found else "")
