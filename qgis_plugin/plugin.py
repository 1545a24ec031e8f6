"""Plugin object QGIS creates through `classFactory`: toolbar action, dock and Processing provider."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QAction

from .dock import RsclipDock, plugin_icon
from .processing_provider import RsclipProvider

MENU = "&rsclip"


class RsclipPlugin:
    """Wires the dock and the Processing provider into QGIS."""

    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.dock: Optional[RsclipDock] = None
        self.provider: Optional[RsclipProvider] = None
        self.action: Optional[QAction] = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS calls it by this name)
        if self.provider is None:
            self.provider = RsclipProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802
        self.initProcessing()
        self.dock = RsclipDock(self.iface, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
        self.action = QAction(plugin_icon(), "rsclip: text search & land cover", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.setChecked(True)
        self.action.toggled.connect(self.dock.setUserVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.action is not None:
            for name, arg in (
                ("removePluginMenu", (MENU, self.action)),
                ("removeToolBarIcon", (self.action,)),
            ):
                remove = getattr(self.iface, name, None)  # test stubs lack some of these
                if remove is not None:
                    remove(*arg)
            self.action.deleteLater()
            self.action = None
        if self.dock is not None:
            self.dock.cleanup()
            remove_dock = getattr(self.iface, "removeDockWidget", None)
            if remove_dock is not None:
                remove_dock(self.dock)
            self.dock.deleteLater()
            self.dock = None
