"""Result layers: load what rsclip_core wrote, style it, add it to the project (main thread only)."""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Tuple

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsClassificationQuantile,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGradientColorRamp,
    QgsGraduatedSymbolRenderer,
    QgsLayerTree,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsPalLayerSettings,
    QgsProject,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsSingleBandPseudoColorRenderer,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

GROUP_NAME = "rsclip results"
KIND_PROPERTY = "rsclip/kind"  # custom layer property: "hits", "heatmap", "landcover", "landcover-polygons"
HIT_FILL_ALPHA = 60  # of 255: the imagery under a hit stays visible
HEATMAP_OPACITY = 0.55
LANDCOVER_OPACITY = 0.7  # the class map over the imagery, dock and Processing alike
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


def _translucent(symbol: QgsFillSymbol, alpha: int = HIT_FILL_ALPHA) -> QgsFillSymbol:
    """The symbol with a see-through fill and an opaque outline of the same colour."""
    layer = symbol.symbolLayer(0)
    color = QColor(symbol.color())
    outline = QColor(color)
    outline.setAlpha(255)
    color.setAlpha(alpha)
    layer.setFillColor(color)
    layer.setStrokeColor(outline)
    return symbol


def style_hits(layer: QgsVectorLayer) -> QgsVectorLayer:
    """Graduated translucent fills with opaque outlines by score, and '#rank score' labels.

    The colour ramp resets each class symbol's colour (alpha included), so the fill alpha is set
    again per class afterwards.
    """
    score = _first_field(layer, SCORE_FIELDS)
    rank = _first_field(layer, RANK_FIELDS)
    symbol = QgsFillSymbol.createSimple(
        {"color": "215,25,28,255", "outline_color": "215,25,28,255", "outline_width": "0.5"}
    )
    if score is not None and layer.featureCount() > 1:
        renderer = QgsGraduatedSymbolRenderer(score)
        renderer.setSourceSymbol(symbol)
        renderer.setClassificationMethod(QgsClassificationQuantile())
        renderer.updateClasses(layer, min(5, layer.featureCount()))
        renderer.updateColorRamp(QgsGradientColorRamp(QColor(254, 204, 92), QColor(189, 0, 38)))
        for i, item in enumerate(renderer.ranges()):
            renderer.updateRangeSymbol(i, _translucent(item.symbol().clone()))
        layer.setRenderer(renderer)
    else:
        layer.renderer().setSymbol(_translucent(symbol))
    layer.setCustomProperty(KIND_PROPERTY, "hits")
    if score is not None:
        label = QgsPalLayerSettings()
        percentile = _first_field(layer, ("percentile",))
        if rank is not None and percentile is not None:
            label.fieldName = (
                f"'#' || \"{rank}\" || '  ' || format_number(\"{score}\", 3)"
                f" || '  p' || format_number(\"{percentile}\", 0)"  # percentile among all tiles
            )
        elif rank is not None:
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


def style_hit_points(layer: QgsVectorLayer) -> QgsVectorLayer:
    """Best-match points of search hits: a cross marker, labelled with the rank."""
    from qgis.core import QgsMarkerSymbol

    layer.renderer().setSymbol(QgsMarkerSymbol.createSimple(
        {"name": "cross2", "color": "215,25,28,255", "outline_color": "215,25,28,255", "size": "4",
         "outline_width": "0.6"}))
    layer.setCustomProperty(KIND_PROPERTY, "hit-points")
    layer.triggerRepaint()
    return layer


def style_heatmap(layer: QgsRasterLayer) -> QgsRasterLayer:
    """Similarity heat-map: a translucent yellow-to-red ramp over the band's range (NaN = clear)."""
    provider = layer.dataProvider()
    stats = provider.bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    low, high = float(stats.minimumValue), float(stats.maximumValue)
    if not high > low:
        high = low + 1e-6
    ramp = QgsColorRampShader(low, high)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    stops = ((0.0, QColor(255, 255, 178, 0)), (0.5, QColor(253, 141, 60, 160)), (1.0, QColor(189, 0, 38, 230)))
    ramp.setColorRampItemList(
        [QgsColorRampShader.ColorRampItem(low + t * (high - low), color, f"{low + t * (high - low):.3f}")
         for t, color in stops]
    )
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    renderer.setOpacity(HEATMAP_OPACITY)
    layer.setRenderer(renderer)
    layer.setCustomProperty(KIND_PROPERTY, "heatmap")
    layer.triggerRepaint()
    return layer


def heatmaps_below_hits(project: Optional[QgsProject] = None) -> None:
    """Move heat-map layers under the hits layers of the same layer-tree group (hits stay readable)."""
    project = project or QgsProject.instance()
    groups = [project.layerTreeRoot()] + project.layerTreeRoot().findGroups(True)
    for group in groups:
        children = group.children()
        kinds = [
            c.layer().customProperty(KIND_PROPERTY) if QgsLayerTree.isLayer(c) and c.layer() else None
            for c in children
        ]
        if "hits" not in kinds:
            continue
        last_hits = max(i for i, k in enumerate(kinds) if k == "hits")
        for i in range(last_hits - 1, -1, -1):
            if kinds[i] == "heatmap":
                node = children[i]
                group.insertChildNode(last_hits + 1, node.clone())
                group.removeChildNode(node)


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
    renderer = QgsPalettedRasterRenderer(provider, 1, entries)
    renderer.setOpacity(LANDCOVER_OPACITY)
    layer.setRenderer(renderer)
    layer.setCustomProperty(KIND_PROPERTY, "landcover")
    layer.triggerRepaint()
    return layer


def style_landcover_polygons(
    layer: QgsVectorLayer, classes: Sequence[Tuple[int, str, Tuple[int, int, int]]]
) -> QgsVectorLayer:
    """Categorized translucent fill by class name with the class colours; legend largest class first.

    Legend labels carry each class's share of the mapped area ('water (41 %)').
    """
    field = _first_field(layer, CLASS_FIELDS)
    if field is None:
        return layer
    area_field = _first_field(layer, ("area_m2", "area"))
    areas: dict = {}
    if area_field is not None:
        for feature in layer.getFeatures():
            value = feature[area_field]
            areas[feature[field]] = areas.get(feature[field], 0.0) + (float(value) if value is not None else 0.0)
    total = sum(areas.values())
    ordered = sorted(classes, key=lambda c: -areas.get(c[1], 0.0))
    categories = []
    for _value, name, rgb in ordered:
        symbol = QgsFillSymbol.createSimple(
            {
                "color": "{},{},{},160".format(*rgb),
                "outline_color": "{},{},{},255".format(*rgb),
                "outline_width": "0.2",
            }
        )
        label = f"{name} ({100.0 * areas[name] / total:.0f} %)" if total > 0 and name in areas else name
        categories.append(QgsRendererCategory(name, symbol, label))
    layer.setRenderer(QgsCategorizedSymbolRenderer(field, categories))
    layer.setCustomProperty(KIND_PROPERTY, "landcover-polygons")
    layer.triggerRepaint()
    return layer


def results_group(project: Optional[QgsProject] = None, subgroup: str = "") -> QgsLayerTreeGroup:
    """The 'rsclip results' group (on top of the layer tree), or its ``subgroup`` (one per raster)."""
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    group = root.findGroup(GROUP_NAME)
    if group is None:
        group = root.insertGroup(0, GROUP_NAME)
    if subgroup:
        child = next((g for g in group.children() if QgsLayerTree.isGroup(g) and g.name() == subgroup), None)
        group = child if child is not None else group.insertGroup(0, subgroup)
    return group


def numbered_name(base: str, project: Optional[QgsProject] = None) -> str:
    """``base`` if no project layer has that name yet, else ``base (2)``, ``base (3)``..."""
    project = project or QgsProject.instance()
    pattern = re.compile(re.escape(base) + r"(?: \((\d+)\))?$")
    taken = [pattern.match(layer.name()) for layer in project.mapLayers().values()]
    numbers = [int(m.group(1) or 1) for m in taken if m]
    return base if not numbers else f"{base} ({max(numbers) + 1})"


def add_to_project(
    layers: Sequence[QgsMapLayer],
    project: Optional[QgsProject] = None,
    hidden: Sequence[QgsMapLayer] = (),
    subgroup: str = "",
) -> None:
    """Add layers on top of the 'rsclip results' group or its ``subgroup`` (first in ``layers`` on top).

    Layers in ``hidden`` are added unchecked (e.g. polygons that duplicate a raster's picture).
    """
    project = project or QgsProject.instance()
    group = results_group(project, subgroup)
    hidden_ids = {layer.id() for layer in hidden}
    for layer in reversed(list(layers)):
        project.addMapLayer(layer, False)
        node = group.insertLayer(0, layer)
        if layer.id() in hidden_ids:
            node.setItemVisibilityChecked(False)
