"""The one place that opens ONNX graphs with onnxruntime (inference, eval, export checks, teachers,
benchmarks): execution providers, thread counts, graph optimisation level, spinning, and a clear
one-line error naming the file when a graph is missing, unreadable or corrupt.

Torch-free; onnxruntime itself is imported only when a session is created.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsclip_core.inference.errors import InvalidModelError, RsclipInputError

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
#: ``optimization`` names -> ``onnxruntime.GraphOptimizationLevel`` members
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(threads: int | None = None, *, optimization: str = "all", allow_spinning: bool = True,
                    log_severity: int = 3) -> Any:
    """``onnxruntime.SessionOptions``: ``threads`` intra-op threads (one inter-op thread) when given,
    else onnxruntime's default; ``allow_spinning=False`` keeps idle workers from burning CPU (timing)."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise RsclipInputError(f"optimization: {optimization!r} is not one of {', '.join(OPTIMIZATION_LEVELS)}")
    if threads is not None and int(threads) < 0:
        raise RsclipInputError(f"threads: {threads} must be >= 0 (0 = onnxruntime's default)")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    options.log_severity_level = int(log_severity)
    if not allow_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnx_session(path: str | os.PathLike, *, providers: Sequence[str] | None = None, threads: int | None = None,
                 optimization: str = "all", allow_spinning: bool = True) -> Any:
    """An ``onnxruntime.InferenceSession`` of the graph at ``path`` (CPU unless ``providers`` says else).

    Raises :class:`~rsclip_core.inference.errors.InvalidModelError` (one line naming ``path``) when
    the file is missing or onnxruntime cannot load it (not ONNX, truncated, unsupported ops).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path}: ONNX graph not found")
    options = session_options(threads, optimization=optimization, allow_spinning=allow_spinning)
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=list(providers or DEFAULT_PROVIDERS))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise InvalidModelError(f"{path}: not a loadable ONNX model ({first})") from exc
