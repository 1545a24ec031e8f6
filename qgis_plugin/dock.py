"""The rsclip dock: input raster + tiling + model on top, Search and Land-cover tabs below.

Every run goes through `rsclip_core.inference.run_search` / `run_classify` inside a `QgsTask`;
this module only gathers the inputs and turns the files those functions write into styled layers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsSettings,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import (
    QgsCollapsibleGroupBox,
    QgsDockWidget,
    QgsDoubleSpinBox,
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsRasterBandComboBox,
)
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QIcon
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from . import PLUGIN_DIR, bridge, deps, layers, wording
from .settings import (
    EXTENT_CANVAS,
    EXTENT_LAYER,
    EXTENT_SELECTION,
    DockSettings,
    load_from_project,
    save_to_project,
)
from .tasks import InferenceTask

COL_NAME, COL_PROMPTS, COL_COLOR = range(3)
OVERLAP_TIP = (
    "Overlap between neighbouring tiles. 0 % is fastest; 25-50 % catches objects cut by tile edges and "
    "gives finer heat-maps and class maps, at about 1.8x (25 %) to 4x (50 %) the encoding time."
)


def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:limit] or "query"


def _model_label(path: str) -> str:
    """Short combo-box label of a user model: its directory name (the full path is the tooltip)."""
    candidate = Path(path)
    folder = candidate.parent if candidate.suffix in (".onnx", ".json") else candidate
    return f"{folder.name or path} (user model)"


def _rgb_hex(rgb: Any) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


class ClassTable(QTableWidget):
    """Editable land-cover class list: name, prompts (';'-separated) and colour (double-click)."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["Class", "Prompts (; separated)", "Colour"])
        header = self.horizontalHeader()
        header.setSectionResizeMode(COL_NAME, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(COL_PROMPTS, QHeaderView.Stretch)
        header.setSectionResizeMode(COL_COLOR, QHeaderView.ResizeToContents)
        self.verticalHeader().setVisible(False)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.cellDoubleClicked.connect(self._maybe_pick_color)

    def _color_item(self, rgb: Any) -> QTableWidgetItem:
        item = QTableWidgetItem(_rgb_hex(rgb))
        item.setFlags(item.flags() & ~Qt.ItemIsEditable)
        color = QColor(*[int(v) for v in rgb])
        item.setBackground(color)
        item.setForeground(QColor(0, 0, 0) if color.lightness() > 128 else QColor(255, 255, 255))
        item.setData(Qt.UserRole, [int(v) for v in rgb])
        return item

    def _maybe_pick_color(self, row: int, column: int) -> None:
        if column != COL_COLOR:
            return
        current = self.item(row, COL_COLOR).data(Qt.UserRole) or [128, 128, 128]
        color = QColorDialog.getColor(QColor(*current), self, "Class colour")
        if color.isValid():
            self.setItem(row, COL_COLOR, self._color_item((color.red(), color.green(), color.blue())))

    def add_class(
        self, name: str = "", prompts: Optional[List[str]] = None, color: Any = (128, 128, 128)
    ) -> None:
        row = self.rowCount()
        self.insertRow(row)
        self.setItem(row, COL_NAME, QTableWidgetItem(name))
        self.setItem(row, COL_PROMPTS, QTableWidgetItem("; ".join(prompts or [])))
        self.setItem(row, COL_COLOR, self._color_item(color))

    def remove_selected(self) -> None:
        for row in sorted({i.row() for i in self.selectedIndexes()}, reverse=True):
            self.removeRow(row)

    def set_classes(self, classes: List[dict]) -> None:
        self.setRowCount(0)
        for c in classes:
            self.add_class(c["name"], list(c.get("prompts") or []), c.get("color", (128, 128, 128)))

    def classes(self) -> List[dict]:
        """Rows as ``{"name", "prompts", "color"}`` dicts (empty names skipped)."""
        out = []
        for row in range(self.rowCount()):
            name = (self.item(row, COL_NAME).text() if self.item(row, COL_NAME) else "").strip()
            if not name:
                continue
            prompts_text = self.item(row, COL_PROMPTS).text() if self.item(row, COL_PROMPTS) else ""
            prompts = [p.strip() for p in prompts_text.split(";") if p.strip()]
            color = (
                self.item(row, COL_COLOR).data(Qt.UserRole) if self.item(row, COL_COLOR) else [128, 128, 128]
            )
            out.append({"name": name, "prompts": prompts, "color": list(color)})
        return out


def classes_to_dicts(classes: Any) -> List[dict]:
    return [{"name": c.name, "prompts": list(c.prompts), "color": list(c.color)} for c in classes]


def dicts_to_classes(rows: List[dict]) -> List[Any]:
    from rsclip_core.inference import LandCoverClass

    return [LandCoverClass(r["name"], list(r.get("prompts") or []), tuple(r["color"])) for r in rows]


class RsclipDock(QgsDockWidget):
    """Dock widget of the plugin. Public ``start_search``/``start_landcover`` return the task started."""

    layersAdded = pyqtSignal(list)  # the QgsMapLayers a finished run added (main thread)

    def __init__(self, iface: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__("rsclip — text search & land cover", parent)
        self.setObjectName("RsclipDock")
        self.iface = iface
        self.tasks: List[InferenceTask] = []
        self.last_hits_layer: Optional[QgsVectorLayer] = None
        self.last_error: str = ""
        self.last_warnings: List[str] = []
        self._loading = False
        self._project_generation = 0  # bumped when the project is cleared: runs of an old project are dropped
        self._build_ui()
        self.load_settings()
        self.refresh_dependencies()
        project = QgsProject.instance()
        project.readProject.connect(self._on_project_read)
        project.cleared.connect(self._on_project_cleared)
        project.layersWillBeRemoved.connect(self._on_layers_removed)

    # ---- UI -------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        # Everything scrolls, so the dock fits a 1366x768 laptop screen next to the map.
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QScrollArea.NoFrame)
        body = QWidget(self.scroll)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(4, 4, 4, 4)

        self.deps_box = QWidget(body)
        deps_row = QHBoxLayout(self.deps_box)
        deps_row.setContentsMargins(0, 0, 0, 0)
        self.deps_label = QLabel(self.deps_box)
        self.deps_label.setWordWrap(True)
        self.deps_label.setStyleSheet("color: #a04000;")
        self.deps_button = QPushButton("Install…", self.deps_box)
        self.deps_button.clicked.connect(self.install_dependencies)
        self.wheels_button = QPushButton("From wheels…", self.deps_box)
        self.wheels_button.setToolTip(
            "Offline: install from a folder of .whl files downloaded on another machine (pip --no-index)"
        )
        self.wheels_button.clicked.connect(self.install_from_wheels)
        deps_row.addWidget(self.deps_label, 1)
        deps_row.addWidget(self.deps_button)
        deps_row.addWidget(self.wheels_button)
        layout.addWidget(self.deps_box)

        # Input raster and tiling.
        input_box = QgsCollapsibleGroupBox("Raster and tiling", body)
        input_box.setObjectName("rsclipRasterGroup")
        input_box.setSaveCollapsedState(True)
        self.input_box = input_box
        form = QFormLayout(input_box)
        self.raster_combo = QgsMapLayerComboBox(input_box)
        self.raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.raster_combo.layerChanged.connect(self._on_raster_changed)
        form.addRow("Raster", self.raster_combo)
        bands_row = QHBoxLayout()
        self.band_combos = []
        for label in ("R", "G", "B"):
            combo = QgsRasterBandComboBox(input_box)
            combo.setShowNotSetOption(False)
            combo.setMinimumWidth(48)
            bands_row.addWidget(QLabel(label, input_box))
            bands_row.addWidget(combo, 1)
            self.band_combos.append(combo)
        form.addRow("Bands", bands_row)
        self.resolution_spin = QgsDoubleSpinBox(input_box)
        self.resolution_spin.setRange(0.0, 10000.0)
        self.resolution_spin.setDecimals(2)
        self.resolution_spin.setSuffix(" m/px")
        self.resolution_spin.setSpecialValueText("native")
        self.resolution_spin.setClearValue(0.0)
        form.addRow("Resolution", self.resolution_spin)
        self.units_label = QLabel(input_box)
        self.units_label.setWordWrap(True)
        self.units_label.setStyleSheet("color: #805000;")
        self.units_label.setVisible(False)
        form.addRow(self.units_label)
        self.tile_spin = QSpinBox(input_box)
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setSpecialValueText("model input size")
        form.addRow("Tile size", self.tile_spin)
        self.overlap_spin = QgsDoubleSpinBox(input_box)
        self.overlap_spin.setRange(0.0, 90.0)
        self.overlap_spin.setDecimals(0)
        self.overlap_spin.setSuffix(" %")
        self.overlap_spin.setToolTip(OVERLAP_TIP)
        form.addRow("Overlap", self.overlap_spin)
        self.detail_combo = QComboBox(input_box)
        for value, label in bridge.MAP_DETAILS:
            self.detail_combo.addItem(label, value)
        self.detail_combo.setToolTip(
            "How fine land-cover maps and heat-maps are: dense uses the model's per-location embeddings "
            "inside each tile; windows blends overlapping tiles; search hits are boxed inside their tile "
            "whenever the model has dense embeddings")
        form.addRow("Map detail", self.detail_combo)
        self.cells_spin = QSpinBox(input_box)
        self.cells_spin.setRange(1, 128)
        self.cells_spin.setValue(bridge.DEFAULT_CELLS_PER_TILE)
        self.cells_spin.setToolTip("Output map cells across one tile (1 with 'One class per tile' = one cell per tile)")
        form.addRow("Cells per tile", self.cells_spin)
        self.extent_combo = QComboBox(input_box)
        self.extent_combo.addItem("Whole layer", EXTENT_LAYER)
        self.extent_combo.addItem("Visible map canvas", EXTENT_CANVAS)
        self.extent_combo.addItem("Selected polygons of…", EXTENT_SELECTION)
        self.extent_combo.currentIndexChanged.connect(self._on_extent_mode)
        form.addRow("Extent", self.extent_combo)
        self.mask_combo = QgsMapLayerComboBox(input_box)
        self.mask_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.mask_combo.setAllowEmptyLayer(True)
        form.addRow("Polygons", self.mask_combo)
        layout.addWidget(input_box)

        # Model.
        model_box = QgsCollapsibleGroupBox("Model", body)
        model_box.setObjectName("rsclipModelGroup")
        model_box.setSaveCollapsedState(True)
        self.model_box = model_box
        model_layout = QVBoxLayout(model_box)
        model_row = QHBoxLayout()
        self.model_combo = QComboBox(model_box)
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.model_browse = QPushButton("Browse…", model_box)
        self.model_browse.setToolTip("Choose an exported rsclip model: its rsclip.json or image.onnx")
        self.model_browse.clicked.connect(self.browse_model)
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.model_browse)
        model_layout.addLayout(model_row)
        self.model_info = QLabel(model_box)
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.RichText)
        model_layout.addWidget(self.model_info)
        layout.addWidget(model_box)

        # Tabs.
        self.tabs = QTabWidget(body)
        search_tab = QWidget()
        search_form = QFormLayout(search_tab)
        self.query_edit = QLineEdit(search_tab)
        self.query_edit.setPlaceholderText("e.g. tennis courts, ships in a harbour")
        self.query_edit.returnPressed.connect(self.start_search)
        search_form.addRow("Query", self.query_edit)
        self.topk_spin = QSpinBox(search_tab)
        self.topk_spin.setRange(1, 10000)
        search_form.addRow("Top-k", self.topk_spin)
        search_buttons = QHBoxLayout()
        self.search_button = QPushButton("Search", search_tab)
        self.search_button.clicked.connect(self.start_search)
        self.zoom_button = QPushButton("Zoom to hits", search_tab)
        self.zoom_button.clicked.connect(self.zoom_to_hits)
        self.zoom_button.setEnabled(False)
        search_buttons.addWidget(self.search_button)
        search_buttons.addWidget(self.zoom_button)
        search_form.addRow(search_buttons)
        self.tabs.addTab(search_tab, "Search")

        lc_tab = QWidget()
        lc_layout = QVBoxLayout(lc_tab)
        self.class_table = ClassTable(lc_tab)
        self.class_table.setMinimumHeight(120)
        lc_layout.addWidget(self.class_table, 1)
        class_buttons = QHBoxLayout()
        class_buttons.setSpacing(2)
        for text, slot in (
            ("Add", self._add_class),
            ("Remove", self.class_table.remove_selected),
            ("Defaults", self.reset_default_classes),
            ("Load…", self.load_class_file),
            ("Save…", self.save_class_file),
        ):
            button = QPushButton(text, lc_tab)
            button.setMinimumWidth(10)
            button.clicked.connect(slot)
            class_buttons.addWidget(button)
        lc_layout.addLayout(class_buttons)
        lc_form = QFormLayout()
        self.threshold_spin = QgsDoubleSpinBox(lc_tab)
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setSpecialValueText("none")
        self.threshold_spin.setToolTip("Pixels whose class probability is below this become 'unclassified'")
        lc_form.addRow("Min. confidence", self.threshold_spin)
        lc_layout.addLayout(lc_form)
        self.landcover_button = QPushButton("Map land cover", lc_tab)
        self.landcover_button.clicked.connect(self.start_landcover)
        lc_layout.addWidget(self.landcover_button)
        self.tabs.addTab(lc_tab, "Land cover")
        layout.addWidget(self.tabs, 1)

        out_row = QFormLayout()
        self.output_widget = QgsFileWidget(body)
        self.output_widget.setStorageMode(QgsFileWidget.GetDirectory)
        self.unsaved_output_button = QPushButton("Default…", body)
        self.unsaved_output_button.setToolTip(
            "Choose the folder results go to while a project is not saved yet (a QGIS setting, all projects)"
        )
        self.unsaved_output_button.clicked.connect(lambda: self.choose_unsaved_output_dir())
        output_row = QHBoxLayout()
        output_row.addWidget(self.output_widget, 1)
        output_row.addWidget(self.unsaved_output_button)
        out_row.addRow("Output folder", output_row)
        layout.addLayout(out_row)

        # Progress, Cancel and the status line stay visible under the scrolling part.
        footer = QWidget(self)
        footer_layout = QVBoxLayout(footer)
        footer_layout.setContentsMargins(4, 2, 4, 4)
        status_row = QHBoxLayout()
        self.progress = QProgressBar(footer)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.cancel_button = QPushButton("Cancel", footer)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_tasks)
        status_row.addWidget(self.progress, 1)
        status_row.addWidget(self.cancel_button)
        footer_layout.addLayout(status_row)
        self.status_label = QLabel(footer)
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        footer_layout.addWidget(self.status_label)
        self.scroll.setWidget(body)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        for combo in body.findChildren(QComboBox):  # long layer/band names must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(4)
            combo.setMinimumWidth(48)
        for spin in (self.resolution_spin, self.tile_spin, self.overlap_spin, self.topk_spin, self.threshold_spin):
            spin.setMinimumWidth(60)
        outer = QWidget(self)
        outer_layout = QVBoxLayout(outer)
        outer_layout.setContentsMargins(0, 0, 0, 0)
        outer_layout.setSpacing(0)
        outer_layout.addWidget(self.scroll, 1)
        outer_layout.addWidget(footer)
        self.setWidget(outer)
        self._on_extent_mode()
        self._update_output_hint()

    # ---- settings -------------------------------------------------------------------------
    def current_settings(self) -> DockSettings:
        raster = self.raster_combo.currentLayer()
        mask = self.mask_combo.currentLayer()
        return DockSettings(
            raster_layer_id=raster.id() if raster else "",
            bands=[c.currentBand() for c in self.band_combos],
            resolution=self.resolution_spin.value(),
            tile_size=self.tile_spin.value(),
            overlap_percent=self.overlap_spin.value(),
            extent_mode=self.extent_combo.currentData(),
            mask_layer_id=mask.id() if mask else "",
            model_path=self.model_combo.currentData() or "",
            output_dir=self.output_widget.filePath(),
            query=self.query_edit.text(),
            top_k=self.topk_spin.value(),
            threshold=self.threshold_spin.value(),
            classes=self.class_table.classes(),
            detail=self.detail_combo.currentData() or "",
            cells_per_tile=self.cells_spin.value(),
        )

    def apply_settings(self, s: DockSettings) -> None:
        self._loading = True
        try:
            project = QgsProject.instance()
            raster = project.mapLayer(s.raster_layer_id) if s.raster_layer_id else None
            if raster is not None:
                self.raster_combo.setLayer(raster)
            self._on_raster_changed(self.raster_combo.currentLayer())
            for combo, band in zip(self.band_combos, s.bands or []):
                combo.setBand(int(band))
            self.resolution_spin.setValue(s.resolution)
            self.tile_spin.setValue(s.tile_size)
            self.overlap_spin.setValue(s.overlap_percent)
            self.extent_combo.setCurrentIndex(max(0, self.extent_combo.findData(s.extent_mode)))
            mask = project.mapLayer(s.mask_layer_id) if s.mask_layer_id else None
            self.mask_combo.setLayer(mask)
            self._fill_models(s.model_path)
            self.output_widget.setFilePath(s.output_dir)
            self.query_edit.setText(s.query)
            self.topk_spin.setValue(s.top_k)
            self.threshold_spin.setValue(s.threshold)
            self.detail_combo.setCurrentIndex(max(0, self.detail_combo.findData(s.detail)))
            self.cells_spin.setValue(max(1, int(s.cells_per_tile)))
            if s.classes is not None:
                self.class_table.set_classes(s.classes)
            else:
                self.reset_default_classes()
        finally:
            self._loading = False

    def load_settings(self) -> None:
        self.apply_settings(load_from_project())

    def save_settings(self) -> None:
        save_to_project(self.current_settings())

    def _on_project_read(self, *_args: Any) -> None:
        self.load_settings()
        self._restore_last_hits()
        self._update_output_hint()

    def _on_project_cleared(self) -> None:
        """Project ▸ New / Open: stop this project's runs (their results would land nowhere)."""
        self._project_generation += 1
        self.cancel_tasks()
        self.last_hits_layer = None
        self.zoom_button.setEnabled(False)
        self.load_settings()
        self._update_output_hint()

    def _on_layers_removed(self, layer_ids: List[str]) -> None:
        removed = set(layer_ids)
        for task in list(self.tasks):
            if getattr(task, "raster_id", None) in removed:
                task.request_cancel()
        if self.last_hits_layer is not None and self._layer_id(self.last_hits_layer) in removed:
            self.last_hits_layer = None
            self.zoom_button.setEnabled(False)

    @staticmethod
    def _layer_id(layer: Any) -> str:
        try:
            return layer.id()
        except RuntimeError:  # the C++ layer is gone already
            return ""

    def _restore_last_hits(self) -> None:
        """After opening a project: the top-most rsclip hits layer is what "Zoom to hits" shows."""
        for node in QgsProject.instance().layerTreeRoot().findLayers():
            layer = node.layer()
            if layer is not None and layer.customProperty(layers.KIND_PROPERTY) == "hits":
                self.last_hits_layer = layer
                break
        self.zoom_button.setEnabled(self.last_hits_layer is not None)

    def _update_output_hint(self) -> None:
        folder = bridge.default_output_dir()
        saved = bool(QgsProject.instance().homePath())
        hint = f"{folder}" + ("" if saved else " (project not saved yet)")
        self.output_widget.lineEdit().setPlaceholderText(hint)
        self.output_widget.setToolTip(
            "Where result files go. Empty: rsclip_outputs next to the project file; before the project "
            f"is saved: {bridge.unsaved_project_output_dir()} (change it with 'Default…')."
        )

    def choose_unsaved_output_dir(self, folder: str = "") -> str:
        """Set the results folder of unsaved projects (asks for it when ``folder`` is empty)."""
        if not folder:
            folder = QFileDialog.getExistingDirectory(
                self, "Results folder for projects not saved yet", str(bridge.unsaved_project_output_dir())
            )
        if folder:
            bridge.set_unsaved_project_output_dir(folder)
            self._update_output_hint()
        return folder

    # ---- inputs ---------------------------------------------------------------------------
    def _on_raster_changed(self, layer: Optional[QgsRasterLayer]) -> None:
        n_bands = layer.bandCount() if isinstance(layer, QgsRasterLayer) else 0
        defaults = bridge.default_bands(n_bands)
        for i, combo in enumerate(self.band_combos):
            combo.setLayer(layer)
            if n_bands:
                combo.setBand(defaults[i] if len(defaults) == 3 else defaults[0])
        note = bridge.units_note(layer) if isinstance(layer, QgsRasterLayer) else ""
        self.units_label.setText(note)
        self.units_label.setVisible(bool(note))

    def _on_extent_mode(self, *_args: Any) -> None:
        self.mask_combo.setEnabled(self.extent_combo.currentData() == EXTENT_SELECTION)

    def _fill_models(self, selected: str = "") -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        bundled = bridge.bundled_model_dir()
        if bundled is not None:
            self.model_combo.addItem(f"Bundled: {bundled.name}", "")
        else:
            self.model_combo.addItem("(no bundled model: Browse… for one)", "")
        if selected:
            self.model_combo.addItem(_model_label(selected), selected)
            self.model_combo.setItemData(1, selected, Qt.ToolTipRole)
            self.model_combo.setCurrentIndex(1)
        self.model_combo.blockSignals(False)
        self._on_model_changed()

    def set_model_path(self, path: str) -> None:
        """Select a user model (a model directory or a file inside it)."""
        index = self.model_combo.findData(path)
        if index < 0:
            self.model_combo.addItem(_model_label(path), path)
            index = self.model_combo.count() - 1
            self.model_combo.setItemData(index, path, Qt.ToolTipRole)
        self.model_combo.setCurrentIndex(index)

    def browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose an exported rsclip model", "", "rsclip model (rsclip.json *.onnx);;All files (*)"
        )
        if path:
            self.set_model_path(path)

    def _model_dir(self) -> Optional[Path]:
        try:
            return bridge.resolve_model_dir(self.model_combo.currentData() or "")
        except ValueError:  # no usable model chosen (PluginInputError or rsclip_core's InvalidModelError)
            return None

    def _on_model_changed(self, *_args: Any) -> None:
        path = self.model_combo.currentData() or ""
        meta = None
        try:
            model_dir = bridge.resolve_model_dir(path)
            self.model_info.setText(bridge.model_summary(model_dir))
            from rsclip_core.spec import ModelMetadata

            meta = ModelMetadata.read(model_dir)
        except Exception as exc:  # shown, not raised: the user can pick another model
            self.model_info.setText(f"<i>{wording.dock_message(exc)}</i>")
        self._update_tiling_tips(meta)
        if not self._loading:
            self.save_settings()

    def _update_tiling_tips(self, meta: Any) -> None:
        """Tooltips that say which resolution / tile size fit the current model, and why."""
        trained = getattr(meta, "resolution_m", None)
        size = getattr(meta, "image_size", None)
        self.resolution_spin.setToolTip(
            "Ground resolution the tiles are resampled to (native = the raster's own). "
            + (f"This model was trained at about {trained:g} m/px: rasters much finer or coarser (3x or more) "
               "look unlike its training images, so set a value near it."
               if trained else "This model does not say its training resolution; aerial models usually "
               "work best at 0.5-2 m/px.")
        )
        self.tile_spin.setToolTip(
            "Tile size in pixels at that resolution ('model input size' = "
            + (f"{size} px, " if size else "")
            + "what the model was trained on). Each tile is resized to the model's input, so a larger "
            "tile gives more context per score but coarser hits and class maps."
        )

    # ---- classes --------------------------------------------------------------------------
    def _add_class(self) -> None:
        self.class_table.add_class("new class", [], (128, 128, 128))

    def reset_default_classes(self) -> None:
        try:
            from rsclip_core.inference import load_classes

            self.class_table.set_classes(
                classes_to_dicts(load_classes(bridge.default_classes_file(self._model_dir())))
            )
        except Exception as exc:
            self.status_label.setText(f"Default classes unavailable: {exc}")

    def load_class_file(self, path: str = "") -> None:
        if not path:
            path, _ = QFileDialog.getOpenFileName(
                self, "Load class file", "", "Class files (*.yaml *.yml *.json)"
            )
        if not path:
            return
        from rsclip_core.inference import load_classes

        try:
            self.class_table.set_classes(classes_to_dicts(load_classes(path)))
        except Exception as exc:
            self._report_error(wording.dock_message(exc))

    def save_class_file(self, path: str = "") -> None:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save class file", "", "YAML (*.yaml);;JSON (*.json)")
        if not path:
            return
        from rsclip_core.inference import save_classes

        try:
            save_classes(dicts_to_classes(self.class_table.classes()), path)
            self.status_label.setText(f"Saved {path}")
        except Exception as exc:
            self._report_error(wording.dock_message(exc))

    # ---- dependencies ---------------------------------------------------------------------
    def refresh_dependencies(self) -> List[Any]:
        missing = deps.missing_requirements()
        self.deps_box.setVisible(bool(missing))
        if missing:
            self.deps_label.setText(
                "Missing Python packages: "
                + ", ".join(r.spec for r in missing)
                + f". They can be installed into {deps.default_deps_dir()} (QGIS's numpy is kept)."
            )
        for button in (self.search_button, self.landcover_button):
            button.setEnabled(not missing)
        return missing

    def install_dependencies(self) -> Optional[InferenceTask]:
        missing = deps.missing_requirements()
        if not missing:
            return None
        answer = QMessageBox.question(
            self,
            "rsclip: install dependencies",
            "Install "
            + ", ".join(r.spec for r in missing)
            + f" with pip into\n{deps.default_deps_dir()}?\n\n"
            "numpy stays at the version QGIS ships; nothing in QGIS's own folders is changed.",
        )
        if answer != QMessageBox.Yes:
            return None

        def work(progress: Any, cancel: Any) -> List[str]:
            return deps.ensure(log=lambda m: None)

        def done(pins: List[str]) -> None:
            self.refresh_dependencies()
            self.status_label.setText(
                f"Installed {len(pins)} packages. Restart QGIS if a package was already loaded."
            )

        return self._start(InferenceTask("rsclip: installing dependencies", work, done, self._on_task_error))

    def install_from_wheels(self, folder: str = "") -> Optional[InferenceTask]:
        """Offline install: remember a folder of wheels (pip --no-index --find-links) and install from it."""
        if not folder:
            folder = QFileDialog.getExistingDirectory(self, "Folder of wheels (.whl) for rsclip's dependencies")
        if not folder:
            return None
        QgsSettings().setValue(deps.WHEELS_SETTING, folder)
        return self.install_dependencies()

    # ---- runs -----------------------------------------------------------------------------
    def _common_inputs(self) -> tuple:
        settings = self.current_settings()
        raster = self.raster_combo.currentLayer()
        path = bridge.raster_path(raster)
        extent = bridge.dock_extent(settings, raster, self.iface.mapCanvas() if self.iface else None)
        tiling = bridge.make_tiling(
            settings.bands, settings.resolution, settings.tile_size, settings.overlap_percent, extent
        )
        model_dir = bridge.resolve_model_dir(settings.model_path)
        return settings, raster, path, tiling, model_dir

    def start_search(self) -> Optional[InferenceTask]:
        """Run the text search in a QgsTask; the hits layer is added when it finishes."""
        try:
            settings, raster, path, tiling, model_dir = self._common_inputs()
            query = settings.query.strip()
            if not query:
                raise bridge.PluginInputError("type a query first (e.g. 'tennis courts')")
            out = (
                bridge.output_dir(settings.output_dir)
                / f"search_{_slug(query)}_{time.strftime('%Y%m%d_%H%M%S')}.gpkg"
            )
        except Exception as exc:
            self._report_error(wording.dock_message(exc))
            return None
        self.save_settings()
        cache = bridge.cache_dir()
        top_k = settings.top_k
        detail = bridge.map_kwargs(settings.detail, settings.cells_per_tile)
        raster_name, raster_id = raster.name(), raster.id()  # the task never touches the layer

        def work(progress: Any, cancel: Any) -> Any:
            from rsclip_core.inference import cached_model, run_search

            started = time.perf_counter()
            model = cached_model(model_dir)
            result = run_search(
                path,
                query,
                tiling=tiling,
                top_k=top_k,
                out_gpkg=out,
                cache_dir=cache,
                overwrite=True,
                progress=progress,
                cancel=cancel,
                model=model,
                **detail,
            )
            from rsclip_core.inference.advice import search_advice

            warnings = search_advice(result.index, model, query, top_k)
            return result, time.perf_counter() - started, warnings

        def done(value: Any) -> None:
            result, seconds, warnings = value
            name = layers.numbered_name(f"rsclip: {query}")
            layer = layers.style_hits(layers.open_vector(str(result.out_gpkg), name, "hits"))
            added = [layer]
            if result.index.dense is not None:  # hits localised inside their tiles: show the best matches
                added.insert(0, layers.style_hit_points(layers.open_vector(
                    str(result.out_gpkg), layers.numbered_name(f"rsclip points: {query}"), "hit_points")))
            layers.add_to_project(added, subgroup=raster_name)
            self.last_hits_layer = layer
            self.zoom_button.setEnabled(True)
            self.zoom_to_hits()
            best = ""
            if len(result.hits):
                best = f"; best {result.hits['score'].iloc[0]:.3f}"
            self._show_result(
                f"'{query}': {layer.featureCount()} hits from {len(result.index)} tiles in {seconds:.1f} s"
                f"{best} → {result.out_gpkg.parent}",
                warnings,
            )
            self.layersAdded.emit(added)

        return self._start(
            InferenceTask(f"rsclip search: {query}", work, done, self._on_task_error), raster_id, [out]
        )

    def start_landcover(self) -> Optional[InferenceTask]:
        """Run zero-shot land cover in a QgsTask; class raster + polygons are added when it finishes."""
        try:
            settings, raster, path, tiling, model_dir = self._common_inputs()
            rows = settings.classes or []
            if len(rows) < 2:
                raise bridge.PluginInputError("land cover needs at least two classes")
            classes = dicts_to_classes(rows)
            stamp = time.strftime("%Y%m%d_%H%M%S")
            folder = bridge.output_dir(settings.output_dir)
            out_tif = folder / f"landcover_{_slug(raster.name())}_{stamp}.tif"
            out_gpkg = folder / f"landcover_{_slug(raster.name())}_{stamp}.gpkg"
        except Exception as exc:
            self._report_error(wording.dock_message(exc))
            return None
        self.save_settings()
        cache = bridge.cache_dir()
        threshold = settings.threshold or None
        detail = bridge.map_kwargs(settings.detail, settings.cells_per_tile)
        raster_name, raster_id = raster.name(), raster.id()  # the task never touches the layer
        prompts = [p for c in classes for p in c.prompts]

        def work(progress: Any, cancel: Any) -> Any:
            from rsclip_core.inference import cached_model, run_classify
            from rsclip_core.inference.advice import classify_advice

            model = cached_model(model_dir)
            run = run_classify(
                path,
                classes,
                tiling=tiling,
                out_tif=out_tif,
                polygons_gpkg=out_gpkg,
                threshold=threshold,
                cache_dir=cache,
                overwrite=True,
                progress=progress,
                cancel=cancel,
                model=model,
                **detail,
            )
            return run, classify_advice(run.index, model, prompts)

        def done(value: Any) -> None:
            result, warnings = value
            style = [(i + 1, c.name, tuple(c.color)) for i, c in enumerate(classes)]
            raster_layer = QgsRasterLayer(
                str(result.out_tif), layers.numbered_name(f"rsclip land cover: {raster_name}"), "gdal"
            )
            layers.style_landcover_raster(raster_layer, style)
            polygons = layers.style_landcover_polygons(
                layers.open_vector(
                    str(result.polygons_gpkg),
                    layers.numbered_name(f"rsclip land cover polygons: {raster_name}"),
                    "landcover",
                ),
                style,
            )
            # The raster shows the map; the polygons (areas, fractions, confidence) start unchecked.
            layers.add_to_project([polygons, raster_layer], hidden=[polygons], subgroup=raster_name)
            self._show_result(
                f"Land cover written to {result.out_tif.name} in {result.out_tif.parent}: "
                + landcover_summary(result.stats),
                warnings,
            )
            self.layersAdded.emit([raster_layer, polygons])

        return self._start(
            InferenceTask(f"rsclip land cover: {raster_name}", work, done, self._on_task_error),
            raster_id,
            [out_tif, out_gpkg],
        )

    def _start(self, task: InferenceTask, raster_id: str = "", outputs: Sequence[Path] = ()) -> InferenceTask:
        """Queue ``task``; results of a run that is cancelled, or whose project is gone, are deleted."""
        task.raster_id = raster_id
        task.outputs = list(outputs)
        generation = self._project_generation
        on_done, on_error = task._on_done, task._on_error

        def done(value: Any) -> None:
            if generation != self._project_generation or task.cancelled:
                self._discard(task)
                on_error(None, True)
                return
            on_done(value)

        def error(exc: Optional[BaseException], cancelled: bool) -> None:
            if cancelled:
                self._discard(task)
            if cancelled or generation == self._project_generation:  # an old project's errors: dropped
                on_error(exc, cancelled)

        task._on_done, task._on_error = done, error
        self.tasks.append(task)
        self.last_error = ""
        self.last_warnings = []
        self.progress.setValue(0)
        self.cancel_button.setEnabled(True)
        self.status_label.setText(task.description() + " …")
        task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        task.taskCompleted.connect(lambda: self._forget(task))
        task.taskTerminated.connect(lambda: self._forget(task))
        QgsApplication.taskManager().addTask(task)
        return task

    @staticmethod
    def _discard(task: InferenceTask) -> None:
        """Delete what a cancelled run may have written (it finished just before the cancel)."""
        for path in getattr(task, "outputs", []):
            for candidate in (Path(path), Path(str(path) + ".aux.xml")):
                try:
                    candidate.unlink()
                except FileNotFoundError:
                    pass

    def _show_result(self, summary: str, warnings: Sequence[str]) -> None:
        """The run's one-line summary, and its warnings (meaningless results) in the dock and message bar."""
        self.last_warnings = list(warnings)
        text = summary
        if warnings:
            text += "".join(f"<br><span style='color:#a04000'>⚠ {w}</span>" for w in warnings)
            bar = self.iface.messageBar() if self.iface is not None else None
            if bar is not None:
                try:
                    bar.pushMessage("rsclip", warnings[0], level=Qgis.Warning, duration=10)
                except TypeError:
                    bar.pushMessage("rsclip", warnings[0])
        self.status_label.setText(text)

    def _forget(self, task: InferenceTask) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
        self.cancel_button.setEnabled(bool(self.tasks))
        if not self.tasks:
            self.progress.setValue(100 if task.status() == task.Complete else 0)

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.request_cancel()

    def _on_task_error(self, error: Optional[BaseException], cancelled: bool) -> None:
        if cancelled:
            self.status_label.setText("Cancelled (nothing was written).")
            return
        self._report_error(wording.dock_message(error) if error is not None else "the task failed")

    def _report_error(self, message: str) -> None:
        self.last_error = message
        html = message.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")
        self.status_label.setText(f"<span style='color:#b00020'>{html}</span>")
        message = message.split("\n\n")[0].splitlines()[0] + (" (details in the rsclip dock)" if "\n" in message else "")
        bar = self.iface.messageBar() if self.iface is not None else None
        if bar is not None:
            try:
                bar.pushMessage("rsclip", message, level=Qgis.Warning, duration=8)
            except TypeError:  # test stubs with a simpler signature
                bar.pushMessage("rsclip", message)

    def zoom_to_hits(self) -> None:
        layer = self.last_hits_layer
        if layer is None or self.iface is None or not self._layer_id(layer) or layer.featureCount() == 0:
            return
        canvas = self.iface.mapCanvas()
        extent = layer.extent()
        dest = canvas.mapSettings().destinationCrs()
        if dest.isValid() and layer.crs().isValid() and dest != layer.crs():
            extent = QgsCoordinateTransform(layer.crs(), dest, QgsProject.instance()).transformBoundingBox(
                extent
            )
        extent.scale(1.15)
        canvas.setExtent(extent)
        canvas.refresh()

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.save_settings()
        super().closeEvent(event)

    def cleanup(self) -> None:
        """Disconnect from the project and stop running tasks (plugin unload)."""
        self.cancel_tasks()
        project = QgsProject.instance()
        for signal, slot in (
            (project.readProject, self._on_project_read),
            (project.cleared, self._on_project_cleared),
            (project.layersWillBeRemoved, self._on_layers_removed),
        ):
            try:
                signal.disconnect(slot)
            except TypeError:
                pass


def landcover_summary(stats: Sequence[dict], limit: int = 6) -> str:
    """'forest 41%, water 22%, …': the largest classes by area first, empty ones left out."""
    rows = sorted((s for s in stats if float(s.get("fraction", 0)) > 0), key=lambda s: -float(s["fraction"]))
    text = ", ".join(f"{s.get('name', '?')} {100 * float(s['fraction']):.0f}%" for s in rows[:limit])
    return text + (f", … ({len(rows) - limit} more)" if len(rows) > limit else "")


def plugin_icon() -> QIcon:
    return QIcon(str(PLUGIN_DIR / "icon.png"))
