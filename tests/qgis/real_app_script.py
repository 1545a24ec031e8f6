"""Run inside the real QGIS desktop (``qgis --code``) by test_real_qgis_app.py.

Drives the installed rsclip plugin like a user: search + land cover from the dock, a Processing
run, then writes what it saw to $RSCLIP_APP_REPORT (JSON) and a window grab, and quits QGIS.
"""

import json
import os
import traceback

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import active_plugins, iface, plugins

report = {"active": list(active_plugins), "errors": [], "steps": []}
state = {"dock": None, "step": 0, "ticks": 0}


def finish() -> None:
    """Arrange the map, give the canvas time to render, then grab the window and quit."""
    try:
        dock = state["dock"]
        for layer in QgsProject.instance().mapLayers().values():  # let the imagery show through
            if layer.name().startswith("rsclip land cover:"):
                layer.renderer().setOpacity(0.45)
                layer.triggerRepaint()
        if dock is not None:
            dock.tabs.setCurrentIndex(0)
            dock.zoom_to_hits()
        iface.mapCanvas().refreshAllLayers()
    except Exception:
        report["errors"].append(traceback.format_exc())
    QTimer.singleShot(2500, grab_and_quit)


def grab_and_quit() -> None:
    try:
        dock = state["dock"]
        report["layers"] = sorted(layer.name() for layer in QgsProject.instance().mapLayers().values())
        report["status"] = dock.status_label.text() if dock else ""
        shot = os.environ.get("RSCLIP_APP_SCREENSHOT")
        if shot:
            report["screenshot"] = iface.mainWindow().grab().save(shot)
    except Exception:
        report["errors"].append(traceback.format_exc())
    with open(os.environ["RSCLIP_APP_REPORT"], "w") as f:
        json.dump(report, f, indent=2)
    QgsApplication.exit(0)


def start() -> None:
    layer = QgsRasterLayer(os.environ["RSCLIP_APP_RASTER"], "scene", "gdal")
    QgsProject.instance().addMapLayer(layer)
    iface.mapCanvas().setExtent(layer.extent())
    dock = plugins["rsclip"].dock
    state["dock"] = dock
    report["missing"] = [r.spec for r in dock.refresh_dependencies()]
    dock.raster_combo.setLayer(layer)
    dock.set_model_path(os.environ["RSCLIP_APP_MODEL"])
    dock.output_widget.setFilePath(os.environ["RSCLIP_APP_OUT"])
    dock.topk_spin.setValue(8)
    dock.query_edit.setText("green vegetation")


def step() -> None:
    """One action at a time: wait for the dock's task to finish before the next one."""
    try:
        dock = state["dock"]
        if dock is None:
            start()
            dock = state["dock"]
        elif dock.tasks:
            state["ticks"] += 1
            if state["ticks"] > 600:
                report["errors"].append("timeout waiting for a task")
                return finish()
            return QTimer.singleShot(100, step)
        actions = [dock.start_landcover, dock.start_search, run_processing, finish]
        action = actions[state["step"]]
        state["step"] += 1
        report["steps"].append(action.__name__)
        if dock.last_error:
            report["errors"].append(dock.last_error)
        action()
        if action is not finish:
            QTimer.singleShot(100, step)
    except Exception:
        report["errors"].append(traceback.format_exc())
        finish()


def run_processing() -> None:
    import processing

    out = os.path.join(os.environ["RSCLIP_APP_OUT"], "processing_hits.gpkg")
    result = processing.run(
        "rsclip:textsearch",
        {
            "INPUT": os.environ["RSCLIP_APP_RASTER"],
            "MODEL": os.environ["RSCLIP_APP_MODEL"],
            "QUERY": "blue water",
            "TOP_K": 4,
            "OUTPUT": out,
        },
    )
    report["processing_output"] = result["OUTPUT"]


QTimer.singleShot(500, step)
