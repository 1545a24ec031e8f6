"""Offscreen screenshot of the dock with search + land-cover results over a real raster.

``RSCLIP_WRITE_SCREENSHOT=1 bash scripts/test_qgis.sh -k screenshot`` refreshes
docs/img/qgis_dock.png (the README's picture); otherwise it is written to a temp folder.
With ``RSCLIP_QGIS_TEST_MODEL=<a real model dir>`` the picture shows that model's results.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from qgis.core import QgsApplication, QgsMapRendererParallelJob, QgsMapSettings, QgsProject
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter
from qgis_helpers import REPO_ROOT, run_dock_task


def _render(layers, crs, extent, size: QSize) -> QImage:
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(crs)
    settings.setOutputSize(size)
    settings.setExtent(extent)
    settings.setBackgroundColor(QColor(255, 255, 255))
    settings.setFlag(QgsMapSettings.DrawLabeling, True)
    settings.setFlag(QgsMapSettings.Antialiasing, True)
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def _to_array(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format_RGB32)
    ptr = image.constBits()
    ptr.setsize(image.height() * image.bytesPerLine())
    return np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)[
        :, : image.width(), :3
    ]


def test_dock_screenshot_with_results(dock, raster_layer, tmp_path):
    dock.topk_spin.setValue(8)
    dock.query_edit.setText(os.environ.get("RSCLIP_SCREENSHOT_QUERY", "green vegetation"))
    dock.overlap_spin.setValue(25)
    dock.output_widget.setFilePath("")  # default: rsclip_outputs next to the project
    run_dock_task(dock, dock.start_landcover)
    run_dock_task(dock, dock.start_search)
    assert dock.last_error == ""
    project = QgsProject.instance()
    hits = dock.last_hits_layer
    landcover = next(x for x in project.mapLayers().values() if x.name().startswith("rsclip land cover:"))
    assert landcover.renderer().opacity() < 1  # styled translucent by the plugin itself

    # Laptop size: the whole picture is 1366x768, the dock at the height it gets next to the map.
    screen = QSize(1366, 768)
    title_h, panel_w = 30, 430
    panel_h = screen.height() - title_h - 20
    extent = raster_layer.extent()
    free_w = (screen.width() - panel_w - 40) // 2
    scale = min(free_w / extent.width(), panel_h / extent.height())
    map_w, map_h = int(extent.width() * scale), int(extent.height() * scale)
    size = QSize(map_w, map_h)
    search_map = _render([hits, raster_layer], raster_layer.crs(), extent, size)
    lc_map = _render([landcover, raster_layer], raster_layer.crs(), extent, size)

    dock.tabs.setCurrentIndex(0)
    dock.resize(panel_w, panel_h)
    dock.widget().resize(panel_w, panel_h)
    QgsApplication.processEvents()
    dock.scroll.ensureWidgetVisible(dock.zoom_button)  # scrolled down to the Search tab, as a user would
    assert dock.minimumSizeHint().height() <= panel_h  # the dock fits (it scrolls)
    panel = dock.widget().grab().toImage()

    canvas = QImage(screen, QImage.Format_ARGB32)
    canvas.fill(QColor(245, 245, 245))
    painter = QPainter(canvas)
    painter.setFont(QFont("Sans", 10))
    painter.setPen(QColor(30, 30, 30))
    painter.drawText(
        10,
        5,
        map_w,
        title_h,
        Qt.AlignVCenter,
        f"Search: '{dock.query_edit.text()}' (top {hits.featureCount()})",
    )
    x_lc, x_panel = 20 + map_w, screen.width() - panel_w - 10
    painter.drawText(x_lc, 5, map_w, title_h, Qt.AlignVCenter, "Zero-shot land cover (default classes)")
    painter.drawText(x_panel, 5, panel_w, title_h, Qt.AlignVCenter, "rsclip dock")
    painter.drawImage(10, title_h + 10, search_map)
    painter.drawImage(x_lc, title_h + 10, lc_map)
    painter.drawImage(x_panel, title_h + 10, panel)
    painter.end()

    target = (
        REPO_ROOT / "docs" / "img" / "qgis_dock.png"
        if os.environ.get("RSCLIP_WRITE_SCREENSHOT")
        else tmp_path / "qgis_dock.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    assert canvas.save(str(target))
    assert Path(target).stat().st_size > 20_000

    # The maps show something: hit outlines (red-ish) over the raster, several land-cover colours.
    pixels = _to_array(search_map)
    assert pixels.std() > 20
    lc_pixels = _to_array(lc_map).reshape(-1, 3)
    assert len(np.unique(lc_pixels // 32, axis=0)) >= 3
    panel_pixels = _to_array(panel)
    assert panel_pixels.std() > 10 and panel.width() >= 400
    assert (canvas.width(), canvas.height()) == (1366, 768)
