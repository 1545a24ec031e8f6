"""Background work: a `QgsTask` that runs one rsclip_core call with progress and cancel.

The callable runs in QGIS's task-manager thread and must not touch the project, layers or
widgets (the dock captures paths, names and extents before it starts); ``on_done``/``on_error``
are invoked from `finished`, which QGIS calls on the main thread, so they are where layers get
added. A cancelled run ends as a *completed* task (so QGIS does not report "Task failed") and
``on_error(None, True)`` is called: the dock says "cancelled".
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask

LOG_TAG = "rsclip"

Work = Callable[[Callable[[int, int], None], Callable[[], bool]], Any]


class InferenceTask(QgsTask):
    """Run ``work(progress, cancel)`` off the main thread; report back on the main thread."""

    def __init__(
        self,
        description: str,
        work: Work,
        on_done: Callable[[Any], None],
        on_error: Callable[[Optional[BaseException], bool], None],
    ) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self._work = work
        self._on_done = on_done
        self._on_error = on_error
        self.result_value: Any = None
        self.error: Optional[BaseException] = None

    def _progress(self, done: int, total: int) -> None:
        if total:
            self.setProgress(min(100.0, 100.0 * float(done) / float(total)))

    @property
    def cancelled(self) -> bool:
        """True when the run was cancelled (by Cancel, a project change or a removed layer)."""
        return bool(self.isCanceled())

    def run(self) -> bool:  # task-manager thread
        try:
            self.result_value = self._work(self._progress, self.isCanceled)
            return True  # a cancelled run is reported by finished(), not as a QGIS task failure
        except Exception as exc:  # reported on the main thread in finished()
            if self.isCanceled():
                return True
            self.error = exc
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Warning)
            return False

    def finished(self, result: bool) -> None:  # main thread
        if self.cancelled and self.error is None:
            self._on_error(None, True)
        elif result:
            self._on_done(self.result_value)
        else:
            self._on_error(self.error, False)
