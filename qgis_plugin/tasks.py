"""Background work: a `QgsTask` that runs one rsclip_core call with progress and cancel.

The callable runs in QGIS's task-manager thread and must not touch the project, layers or
widgets (the dock captures paths, names and extents before it starts); ``on_done``/``on_error``
are invoked from `finished`, which QGIS calls on the main thread, so they are where layers get
added. The dock stops a run with `request_cancel` (not ``QgsTask.cancel``, which ends a task that
is still queued as *terminated*, shown by QGIS as "Task failed"): the run sees it at its next
check and ends as a *completed* task, and ``on_error(None, True)`` is called: the dock says
"cancelled". A cancel from QGIS's own task manager is honoured the same way once the task runs.
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
        self._stop_requested = False

    def _progress(self, done: int, total: int) -> None:
        if total:
            self.setProgress(min(100.0, 100.0 * float(done) / float(total)))

    def request_cancel(self) -> None:
        """Stop the run at its next cancel check; a queued task still starts, stops at once, completes."""
        self._stop_requested = True

    @property
    def cancelled(self) -> bool:
        """True when the run was cancelled (by Cancel, a project change, a removed layer or QGIS)."""
        return self._stop_requested or bool(self.isCanceled())

    def _should_stop(self) -> bool:
        return self.cancelled

    def run(self) -> bool:  # task-manager thread
        try:
            if self.cancelled:
                return True
            self.result_value = self._work(self._progress, self._should_stop)
            return True  # a cancelled run is reported by finished(), not as a QGIS task failure
        except Exception as exc:  # reported on the main thread in finished()
            if self.cancelled:
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
