"""Helpers shared by the QGIS plugin tests (a plain module: test files import it by name)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    """Process Qt events (task manager signals, finished() callbacks) until ``condition()``."""
    from qgis.core import QgsApplication

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        QgsApplication.processEvents()
        time.sleep(0.01)
    for _ in range(5):
        QgsApplication.processEvents()


def run_dock_task(dock: Any, start: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Start a dock run and wait until its finished() callback has run; returns what start() returned."""
    task = start()
    assert task is not None, f"the dock refused to start: {dock.last_error}"
    wait_until(lambda: task not in dock.tasks, timeout)
    return task
