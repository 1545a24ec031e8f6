"""Result layers: load what rsclip_core wrote, style it, add it to the project (main thread only)."""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsClassificationQuantile,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsPalLayerSettings,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

GROUP_NAME = "rsclip results"
SCORE_FIELDS = ("score", "similarity")
RANK_FIELDS = ("rank",)
CLASS_FIELDS = ("class_name", "class", "label", "name")
CLASS_ID_FIELDS = ("class_id", "value", "class_index")


class ResultLayerError(RuntimeError):
    """A result file rsclip_core wrote could not be opened as a QGIS layer."""


def _first_field(layer: QgsVectorLayer, candidates: Iterable[str]) -> Optional[str]:
    names = {f.name().lower(): f.name() for f in layer.fields()}
    for candidate in candidates:
        if candidate in names:
            return names[candidate]
    return None


def open_vector(path: str, name: str, layer_name: Optional[str] = None) -> QgsVectorLayer:
    """Open a GeoPackage (optionally one of its layers) as a QGIS vector layer."""
    uri = f"{path}|layername={layer_name}" if layer_name else path
    layer = QgsVectorLayer(uri, name, "ogr")
    if not layer.isValid():
        raise ResultLayerError(f"{path}: cannot open as a vector layer")
    return layer


def style_hits(layer: QgsVectorLayer) -> QgsVectorLayer:
    """Graduated red outlines/fills by score and '#rank score' labels."""
    score = _first_field(layer, SCORE_FIELDS)
    rank = _first_field(layer, RANK_FIELDS)
    symbol = QgsFillSymbol.createSimple(
        {"color": "215,25,28,70", "outline_color": "215,25,28,255", "outline_width": "0.5"}
    )
    if score is not None and layer.featureCount() > 1:
        renderer = QgsGraduatedSymbolRenderer(score)
        renderer.setSourceSymbol(symbol)
        renderer.setClassificationMethod(QgsClassificationQuantile())
        renderer.updateClasses(layer, min(5, layer.featureCount()))
        renderer.updateColorRamp(QgsGradientColorRamp(QColor(254, 204, 92), QColor(189, 0, 38)))
        layer.setRenderer(renderer)
    else:
        layer.renderer().setSymbol(symbol)
    if score is not None:
        label = QgsPalLayerSettings()
        if rank is not None:
            label.fieldName = f"'#' || \"{rank}\" || '  ' || format_number(\"{score}\", 3)"
        else:
            label.fieldName = f'format_number("{score}", 3)'
        label.isExpression = True
        label.placement = QgsPalLayerSettings.OverPoint
        text = QgsTextFormat()
        text.setSize(9)
        text.setColor(QColor(20, 20, 20))
        buffer = QgsTextBufferSettings()
        buffer.setEnabled(True)
        buffer.setSize(1.0)
        buffer.setColor(QColor(255, 255, 255))
        text.setBuffer(buffer)
        label.setFormat(text)
        layer.setLabeling(QgsVectorLayerSimpleLabeling(label))
        layer.setLabelsEnabled(True)
    layer.triggerRepaint()
    return layer


def style_landcover_raster(
    layer: QgsRasterLayer, classes: Sequence[Tuple[int, str, Tuple[int, int, int]]]
) -> QgsRasterLayer:
    """Paletted renderer: the GeoTIFF's colour table, labelled with the class names.

    ``classes`` are (pixel value, name, rgb); values in the colour table but not in ``classes``
    (e.g. 'unclassified') keep their colour with the value as label.
    """
    provider = layer.dataProvider()
    by_value = {int(value): (name, rgb) for value, name, rgb in classes}
    table = QgsPalettedRasterRenderer.colorTableToClassData(provider.colorTable(1))
    present = {int(c.value) for c in table}
    entries: List[QgsPalettedRasterRenderer.Class] = []
    for item in table:
        value = int(item.value)
        if value in by_value:
            name, rgb = by_value[value]
            entries.append(QgsPalettedRasterRenderer.Class(value, QColor(*rgb), name))
        elif item.color.alpha() > 0:
            entries.append(QgsPalettedRasterRenderer.Class(value, item.color, item.label or str(value)))
    for value, (name, rgb) in sorted(by_value.items()):
        if value not in present:
            entries.append(QgsPalettedRasterRenderer.Class(value, QColor(*rgb), name))
    entries.sort(key=lambda c: c.value)
    layer.setRenderer(QgsPalettedRasterRenderer(provider, 1, entries))
    layer.triggerRepaint()
    return layer


def style_landcover_polygons(
    layer: QgsVectorLayer, classes: Sequence[Tuple[int, str, Tuple[int, int, int]]]
) -> QgsVectorLayer:
    """Categorized fill by class name with the class colours."""
    field = _first_field(layer, CLASS_FIELDS)
    if field is None:
        return layer
    categories = []
    for _value, name, rgb in classes:
        symbol = QgsFillSymbol.createSimple(
            {
                "color": "{},{},{},160".format(*rgb),
                "outline_color": "{},{},{},255".format(*rgb),
                "outline_width": "0.2",
            }
        )
        categories.append(QgsRendererCategory(name, symbol, name))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    layer.triggerRepaint()
    return layer


def results_group(project: Optional[QgsProject] = None) -> QgsLayerTreeGroup:
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    group = root.findGroup(GROUP_NAME)
    if group is None:
        group = root.insertGroup(0, GROUP_NAME)
    return group


def add_to_project(
    layers: Sequence[QgsMapLayer], project: Optional[QgsProject] = None, hidden: Sequence[QgsMapLayer] = ()
) -> None:
    """Add layers on top of the 'rsclip results' group (first in ``layers`` ends up on top).

    Layers in ``hidden`` are added unchecked (e.g. polygons that duplicate a raster's picture).
    """
    project = project or QgsProject.instance()
    group = results_group(project)
    hidden_ids = {layer.id() for layer in hidden}
    for layer in reversed(list(layers)):
        project.addMapLayer(layer, False)
        node = group.insertLayer(0, layer)
        if layer.id() in hidden_ids:
            node.setItemVisibilityChecked(False)
