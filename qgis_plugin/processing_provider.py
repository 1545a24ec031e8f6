"""Processing provider: "Text search", "Zero-shot land cover" and "Build embedding index".

The same rsclip_core.inference runs as the dock, exposed as Processing algorithms so they work in
the toolbox, batch mode, the model builder and ``processing.run("rsclip:textsearch", {...})``.
Chaining "Build embedding index" (its CACHE_FOLDER output) into the others' CACHE_FOLDER input
makes every later query on the raster cost only a text encoding.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputNumber,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBand,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingProvider,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QIcon

from . import PLUGIN_DIR, bridge, layers, wording

MODEL_FILTER = "rsclip model (rsclip.json *.onnx);;All files (*)"


def _icon() -> QIcon:
    return QIcon(str(PLUGIN_DIR / "icon.png"))


class _HitsStyler(QgsProcessingLayerPostProcessorInterface):
    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802
        layers.style_hits(layer)
        layers.heatmaps_below_hits(context.project())


class _HeatmapStyler(QgsProcessingLayerPostProcessorInterface):
    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802
        layers.style_heatmap(layer)
        layers.heatmaps_below_hits(context.project())


class _LandCoverStyler(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, classes: Any) -> None:
        super().__init__()
        self.style = [(i + 1, c.name, tuple(c.color)) for i, c in enumerate(classes)]

    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802
        if isinstance(layer, QgsRasterLayer):
            layers.style_landcover_raster(layer, self.style)
        else:
            layers.style_landcover_polygons(layer, self.style)


# The processing context takes ownership of each post-processor and deletes it once applied, so
# every output gets its own instance; the Python objects are also kept here until then.
_STYLERS: list = []


def _keep(styler: Any) -> Any:
    _STYLERS.append(styler)
    del _STYLERS[:-16]
    return styler


class _RsclipAlgorithm(QgsProcessingAlgorithm):
    """Shared inputs: raster, bands, tiling, extent/mask, model and index cache folder."""

    INPUT = "INPUT"
    BANDS = "BANDS"
    RESOLUTION = "RESOLUTION"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    EXTENT = "EXTENT"
    MASK = "MASK"
    MODEL = "MODEL"
    CACHE_FOLDER = "CACHE_FOLDER"
    DETAIL = "DETAIL"
    CELLS_PER_TILE = "CELLS_PER_TILE"

    def group(self) -> str:
        return "Raster"

    def groupId(self) -> str:  # noqa: N802
        return "raster"

    def icon(self) -> QIcon:
        return _icon()

    def createInstance(self) -> "QgsProcessingAlgorithm":  # noqa: N802
        return type(self)()

    def add_common_parameters(self, with_cache_input: bool = True) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Input raster"))
        self.addParameter(
            QgsProcessingParameterFile(
                self.MODEL,
                "Model (rsclip.json or image.onnx of an exported model; empty = bundled default)",
                behavior=QgsProcessingParameterFile.File,
                fileFilter=MODEL_FILTER,
                optional=True,
            )
        )
        bands = QgsProcessingParameterBand(
            self.BANDS,
            "Bands used as R, G, B (empty = 1, 2, 3)",
            parentLayerParameterName=self.INPUT,
            optional=True,
            allowMultiple=True,
        )
        self.addParameter(bands)
        self.addParameter(
            QgsProcessingParameterNumber(
                self.RESOLUTION,
                "Ground resolution in m/px (0 = native)",
                QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_SIZE,
                "Tile size in px (0 = model input size)",
                QgsProcessingParameterNumber.Integer,
                defaultValue=0,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.OVERLAP,
                "Tile overlap (%)",
                QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
                maxValue=90.0,
            )
        )
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Processing extent", optional=True))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.MASK, "Only inside these polygons", [QgsProcessing.TypeVectorPolygon], optional=True
            )
        )
        if with_cache_input:
            cache = QgsProcessingParameterFile(
                self.CACHE_FOLDER,
                "Embedding index folder (reuse / store the index; empty = plugin cache)",
                behavior=QgsProcessingParameterFile.Folder,
                optional=True,
            )
            cache.setFlags(cache.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(cache)

    def add_map_parameters(self) -> None:
        """Map detail (see ``bridge.MAP_DETAILS``) and output cells per tile, for maps and heat-maps."""
        self.addParameter(
            QgsProcessingParameterEnum(
                self.DETAIL, "Map detail", options=[label for _, label in bridge.MAP_DETAILS], defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.CELLS_PER_TILE,
                "Output cells per tile (1 with 'One class per tile' = one cell per tile)",
                QgsProcessingParameterNumber.Integer,
                defaultValue=bridge.DEFAULT_CELLS_PER_TILE,
                minValue=1,
            )
        )

    def map_inputs(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> Dict[str, Any]:
        choice = self.parameterAsEnum(parameters, self.DETAIL, context)
        detail = bridge.MAP_DETAILS[choice][0] if 0 <= choice < len(bridge.MAP_DETAILS) else ""
        return bridge.map_kwargs(detail, self.parameterAsInt(parameters, self.CELLS_PER_TILE, context))

    def common_inputs(
        self, parameters: Dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> Tuple[str, Any, Any]:
        """(raster path, TilingConfig, EmbeddingModel) from the shared parameters."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        try:
            path = bridge.raster_path(layer)
            extent: Any = None
            if parameters.get(self.MASK) is not None:
                source = self.parameterAsSource(parameters, self.MASK, context)
                if source is not None:
                    extent = bridge.geometries_to_shapely(
                        [f.geometry() for f in source.getFeatures()], source.sourceCrs(), layer.crs()
                    )
                    if not extent:
                        raise bridge.PluginInputError("MASK: the polygon layer has no geometries")
            elif parameters.get(self.EXTENT) is not None:
                rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
                if not rect.isNull() and not rect.isEmpty():
                    extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
            # Empty = the dock's default: 1, 2, 3 (or 1 for a single-band raster).
            bands = self.parameterAsInts(parameters, self.BANDS, context) or bridge.default_bands(layer.bandCount())
            if len(bands) not in (1, 3):
                raise bridge.PluginInputError(
                    f"BANDS: choose 3 bands (R, G, B) or 1 (grey), got {len(bands)}"
                )
            tiling = bridge.make_tiling(
                bands,
                self.parameterAsDouble(parameters, self.RESOLUTION, context),
                self.parameterAsInt(parameters, self.TILE_SIZE, context),
                self.parameterAsDouble(parameters, self.OVERLAP, context),
                extent,
            )
            model_dir = bridge.resolve_model_dir(self.parameterAsFile(parameters, self.MODEL, context))
            feedback.pushInfo(f"model: {model_dir}")
            from rsclip_core.inference import cached_model

            model = cached_model(model_dir)
        except (ValueError, OSError) as exc:
            raise QgsProcessingException(wording.processing_message(exc)) from exc
        note = bridge.units_note(layer)
        if note:
            feedback.pushInfo(note)
        return path, tiling, model

    def postProcessAlgorithm(
        self, context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> Dict[str, Any]:  # noqa: N802
        """Main thread, after the run: style the outputs QGIS is about to load (as the cookbook does it)."""
        for target, styler in getattr(self, "stylers", []):
            if context.willLoadLayerOnCompletion(target):
                context.layerToLoadOnCompletionDetails(target).setPostProcessor(styler)
        return {}

    def cache_folder(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> str:
        folder = (
            self.parameterAsFile(parameters, self.CACHE_FOLDER, context)
            if self.CACHE_FOLDER in parameters
            else ""
        )
        return folder or str(bridge.cache_dir())

    @staticmethod
    def callbacks(feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        def progress(done: int, total: int) -> None:
            if total:
                feedback.setProgress(100.0 * done / total)

        return {"progress": progress, "cancel": feedback.isCanceled}

    def run_guarded(self, fn: Any, feedback: QgsProcessingFeedback, **kwargs: Any) -> Any:
        """Call an rsclip_core run, turning its errors into QgsProcessingException."""
        from rsclip_core.inference import RsclipCancelled

        try:
            return fn(**kwargs, **self.callbacks(feedback))
        except RsclipCancelled as exc:
            raise QgsProcessingException("cancelled") from exc
        except (ValueError, OSError) as exc:
            raise QgsProcessingException(wording.processing_message(exc)) from exc

    @staticmethod
    def report_warnings(warnings: Any, feedback: QgsProcessingFeedback) -> None:
        for warning in warnings:
            feedback.pushWarning(f"Warning: {warning}")


class TextSearchAlgorithm(_RsclipAlgorithm):
    QUERY = "QUERY"
    TOP_K = "TOP_K"
    OUTPUT = "OUTPUT"
    HEATMAP = "HEATMAP"
    HIT_POINTS = "HIT_POINTS"

    def name(self) -> str:
        return "textsearch"

    def displayName(self) -> str:  # noqa: N802
        return "Text search"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Ranks the tiles of a raster by similarity to a text query (e.g. 'tennis courts') and writes "
            "the best non-overlapping hits as polygons with rank and score, plus an optional heat-map. With "
            "a model that has dense embeddings each hit is a tight box where the query matches inside its "
            "tile (the tile's bounds are attributes) and HIT_POINTS gives the best-match points."
        )

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.add_common_parameters()
        self.addParameter(QgsProcessingParameterString(self.QUERY, "Text query"))
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TOP_K,
                "Number of hits",
                QgsProcessingParameterNumber.Integer,
                defaultValue=20,
                minValue=1,
            )
        )
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.OUTPUT, "Search hits", QgsProcessing.TypeVectorPolygon
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.HEATMAP, "Similarity heat-map", optional=True, createByDefault=False
            )
        )
        self.add_map_parameters()
        self.addOutput(QgsProcessingOutputVectorLayer(self.HIT_POINTS, "Best-match points", QgsProcessing.TypeVectorPoint))

    def processAlgorithm(
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,  # noqa: N802
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        from rsclip_core.inference import run_search

        path, tiling, model = self.common_inputs(parameters, context, feedback)
        query = self.parameterAsString(parameters, self.QUERY, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if not out.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"OUTPUT: {out}: hits are written as a GeoPackage (.gpkg)")
        heatmap = self.parameterAsOutputLayer(parameters, self.HEATMAP, context) or None
        run = self.run_guarded(
            run_search,
            feedback,
            raster=path,
            query=query,
            tiling=tiling,
            model=model,
            top_k=self.parameterAsInt(parameters, self.TOP_K, context),
            out_gpkg=out,
            heatmap_tif=heatmap,
            cache_dir=self.cache_folder(parameters, context),
            overwrite=True,
            **self.map_inputs(parameters, context),
        )
        feedback.pushInfo(f"{len(run.hits)} hits among {len(run.index)} tiles")
        from rsclip_core.inference.advice import search_advice

        self.report_warnings(
            search_advice(run.index, model, query, self.parameterAsInt(parameters, self.TOP_K, context)), feedback
        )
        self.stylers = [(out, _keep(_HitsStyler()))]
        result = {self.OUTPUT: out, self.HIT_POINTS: f"{out}|layername=hit_points"}
        if heatmap:
            result[self.HEATMAP] = heatmap
            self.stylers.append((heatmap, _keep(_HeatmapStyler())))
        return result


class LandCoverAlgorithm(_RsclipAlgorithm):
    CLASSES = "CLASSES"
    THRESHOLD = "THRESHOLD"
    OUTPUT = "OUTPUT"
    POLYGONS = "POLYGONS"
    CONFIDENCE = "CONFIDENCE"

    def name(self) -> str:
        return "landcover"

    def displayName(self) -> str:  # noqa: N802
        return "Zero-shot land cover"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Classifies every tile against a list of land-cover classes described by text prompts "
            "(YAML/JSON class file; empty = the default list) and writes a colour-mapped class raster, "
            "optionally dissolved class polygons with areas and a confidence raster. Map detail: dense "
            "(per-location embeddings inside each tile, the default with models that have them), "
            "overlapping windows soft-voted per pixel, both, or one class per tile; maps cover the "
            "raster or extent exactly at CELLS_PER_TILE cells across a tile."
        )

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.add_common_parameters()
        self.addParameter(
            QgsProcessingParameterFile(
                self.CLASSES,
                "Class file (YAML/JSON: name, prompts, color; empty = default list)",
                behavior=QgsProcessingParameterFile.File,
                fileFilter="Class files (*.yaml *.yml *.json)",
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.THRESHOLD,
                "Minimum confidence (0 = none; below it pixels are 'unclassified')",
                QgsProcessingParameterNumber.Double,
                defaultValue=0.0,
                minValue=0.0,
                maxValue=1.0,
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Land-cover map"))
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                self.POLYGONS,
                "Land-cover polygons",
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterDestination(
                self.CONFIDENCE, "Confidence", optional=True, createByDefault=False
            )
        )
        self.add_map_parameters()

    def processAlgorithm(
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,  # noqa: N802
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        from rsclip_core.inference import default_classes_path, load_classes, run_classify

        path, tiling, model = self.common_inputs(parameters, context, feedback)
        class_file = self.parameterAsFile(parameters, self.CLASSES, context)
        try:
            classes = load_classes(class_file or default_classes_path(model))
        except (ValueError, OSError) as exc:
            raise QgsProcessingException(wording.processing_message(exc)) from exc
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        polygons = self.parameterAsOutputLayer(parameters, self.POLYGONS, context) or None
        if polygons and not polygons.lower().endswith(".gpkg"):
            raise QgsProcessingException(
                f"POLYGONS: {polygons}: polygons are written as a GeoPackage (.gpkg)"
            )
        confidence = self.parameterAsOutputLayer(parameters, self.CONFIDENCE, context) or None
        threshold = self.parameterAsDouble(parameters, self.THRESHOLD, context) or None
        run = self.run_guarded(
            run_classify,
            feedback,
            raster=path,
            classes=classes,
            tiling=tiling,
            model=model,
            out_tif=out,
            polygons_gpkg=polygons,
            confidence_tif=confidence,
            threshold=threshold,
            cache_dir=self.cache_folder(parameters, context),
            overwrite=True,
            **self.map_inputs(parameters, context),
        )
        for row in sorted(run.stats, key=lambda r: -float(r["fraction"])):  # largest first, as the dock
            feedback.pushInfo(f"{row['name']}: {100.0 * row['fraction']:.1f}%")
        from rsclip_core.inference.advice import classify_advice

        self.report_warnings(classify_advice(run.index, model, [p for c in classes for p in c.prompts]), feedback)
        self.stylers = [(target, _keep(_LandCoverStyler(classes))) for target in (out, polygons) if target]
        result = {self.OUTPUT: out}
        if polygons:
            result[self.POLYGONS] = polygons
        if confidence:
            result[self.CONFIDENCE] = confidence
        return result


class BuildIndexAlgorithm(_RsclipAlgorithm):
    OUTPUT_FOLDER = "OUTPUT_FOLDER"
    INDEX_FILE = "INDEX_FILE"
    TILES = "TILES"

    def name(self) -> str:
        return "buildindex"

    def displayName(self) -> str:  # noqa: N802
        return "Build embedding index"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Embeds every tile of a raster once and stores the index in a folder. Pass that folder as "
            "'Embedding index folder' to Text search / Zero-shot land cover (e.g. in the model builder) "
            "and each query then only encodes its text."
        )

    def initAlgorithm(self, config: Optional[dict] = None) -> None:  # noqa: N802
        self.add_common_parameters(with_cache_input=False)
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT_FOLDER, "Index folder"))
        self.addOutput(QgsProcessingOutputFile(self.INDEX_FILE, "Index file"))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, "Tiles embedded"))

    def processAlgorithm(
        self,
        parameters: Dict[str, Any],
        context: QgsProcessingContext,  # noqa: N802
        feedback: QgsProcessingFeedback,
    ) -> Dict[str, Any]:
        from rsclip_core.inference import run_index

        path, tiling, model = self.common_inputs(parameters, context, feedback)
        folder = self.parameterAsString(parameters, self.OUTPUT_FOLDER, context)
        run = self.run_guarded(run_index, feedback, raster=path, tiling=tiling, model=model, cache_dir=folder)
        feedback.pushInfo(f"{'reused' if run.reused else 'built'} {run.index_path} ({len(run.index)} tiles)")
        return {self.OUTPUT_FOLDER: folder, self.INDEX_FILE: str(run.index_path), self.TILES: len(run.index)}


class RsclipProvider(QgsProcessingProvider):
    """The 'rsclip' Processing provider."""

    def id(self) -> str:
        return "rsclip"

    def name(self) -> str:
        return "rsclip"

    def longName(self) -> str:  # noqa: N802
        return "rsclip: text search and zero-shot land cover"

    def icon(self) -> QIcon:
        return _icon()

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (TextSearchAlgorithm(), LandCoverAlgorithm(), BuildIndexAlgorithm()):
            self.addAlgorithm(algorithm)


__all__ = ["RsclipProvider", "TextSearchAlgorithm", "LandCoverAlgorithm", "BuildIndexAlgorithm"]
