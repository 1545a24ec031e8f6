"""rsclip QGIS plugin: text-prompted search and zero-shot land-cover mapping of rasters.

A thin Qt shell over ``rsclip_core.inference``; QGIS loads it through `classFactory`.
Nothing heavy is imported here, so the plugin loads (and offers to install what is missing)
even when onnxruntime or tokenizers are not yet available in QGIS's Python.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent


def bootstrap_paths() -> None:
    """Make the dependencies and ``rsclip_core`` importable.

    Order: the plugin-local dependency folder (see `deps`), then the ``rsclip_core`` copy bundled
    in the plugin zip (``vendor/``), else a source checkout's ``rsclip_core`` next to this folder.
    """
    from . import deps

    deps.activate()
    vendor = PLUGIN_DIR / "vendor"
    if (vendor / "rsclip_core").is_dir():
        if str(vendor) not in sys.path:
            sys.path.insert(0, str(vendor))
    elif importlib.util.find_spec("rsclip_core") is None and (PLUGIN_DIR.parent / "rsclip_core").is_dir():
        sys.path.append(str(PLUGIN_DIR.parent))


def classFactory(iface):  # noqa: N802 (QGIS entry point name)
    """QGIS plugin entry point."""
    bootstrap_paths()
    from .plugin import RsclipPlugin

    return RsclipPlugin(iface)
