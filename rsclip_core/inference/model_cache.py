"""Finding a model directory from what a user picked, and one process-wide cache of loaded models.

Creating onnxruntime sessions costs seconds, so every front-end (``rsclip-map`` batch workers,
the QGIS dock and Processing algorithms) gets its models through `cached_model` and loads each
directory once per process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from rsclip_core import spec
from rsclip_core.inference.errors import InvalidModelError, RsclipFileNotFoundError
from rsclip_core.inference.model import EmbeddingModel, default_model_dir, load_model


def resolve_model_dir(path: str | os.PathLike | None, *, default: str | os.PathLike | None = None) -> Path:
    """The model directory meant by ``path``: the directory itself or any file inside it (``image.onnx``).

    An empty ``path`` means ``default`` if given, else `default_model_dir()` (``$RSCLIP_MODEL`` or
    the bundled model). Errors name the ``model`` field.
    """
    if path is None or not str(path).strip():
        return Path(default) if default is not None else default_model_dir()
    candidate = Path(path).expanduser()
    if not candidate.exists():
        raise RsclipFileNotFoundError(f"{path}: no such model directory or file", field="model")
    if candidate.is_file():
        candidate = candidate.parent
    if not (candidate / spec.METADATA_FILE).is_file():
        raise InvalidModelError(f"{path}: not an exported rsclip model (no {spec.METADATA_FILE} next to it)",
                                field="model")
    return candidate


class ModelCache:
    """Loaded models keyed by resolved directory and thread count; safe to share between threads."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, int | None], EmbeddingModel] = {}
        self._lock = threading.Lock()

    def get(self, model_dir: str | os.PathLike | None = None, *, threads: int | None = None) -> EmbeddingModel:
        """The model of ``model_dir`` (see `resolve_model_dir`), loaded on first use."""
        key = (str(resolve_model_dir(model_dir).resolve()), threads)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_model(key[0], threads=threads)
            return self._models[key]

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        """Forget every loaded model (e.g. after the files of a model directory changed)."""
        with self._lock:
            self._models.clear()


MODEL_CACHE = ModelCache()
"""The process-wide cache used by `cached_model`."""


def cached_model(model_dir: str | os.PathLike | None = None, *, threads: int | None = None) -> EmbeddingModel:
    """``MODEL_CACHE.get(model_dir, threads=threads)``: each model directory is loaded once per process."""
    return MODEL_CACHE.get(model_dir, threads=threads)
