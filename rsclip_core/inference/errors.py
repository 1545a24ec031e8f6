"""Exceptions of the inference engine: one clear line naming the file or field at fault.

Errors about one input carry its *field* (``bands``, ``output``, ...; the keys of `FIELDS`)
instead of a command-line flag, so each front-end words them for its users::

    raise RsclipInputError("give 3 band numbers or 1, got (1, 2)", field="bands")
    str(exc)                                   # 'bands: give 3 band numbers or 1, got (1, 2)'
    describe_error(exc, {"bands": "--bands"})  # '--bands: give 3 band numbers or 1, got (1, 2)'

A message may also mention another field as ``{name}`` (e.g. ``"exists (use {overwrite} to
replace it)"``); it is replaced by that field's label in the same way. ``rsclip-map`` words errors
with its flags (``rsclip_core.cli.map.CLI_FLAGS``), the QGIS plugin with its dock labels and
Processing parameter names (``qgis_plugin/wording.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rsclip_core.spec import ModelDirError

FIELDS: dict[str, str] = {
    "raster": "input raster(s)",
    "model": "model directory",
    "classes": "class file or class list",
    "output": "main output file (class map, search hits)",
    "polygons": "land-cover polygons output",
    "confidence": "confidence raster output",
    "heatmap": "search heat-map output",
    "out_dir": "batch output folder",
    "cache_dir": "embedding index folder",
    "overwrite": "permission to replace existing outputs",
    "bands": "bands used as R,G,B (1-based)",
    "tile_size": "tile size in pixels",
    "overlap": "tile overlap fraction",
    "resolution": "target ground resolution (m/px)",
    "extent": "processing extent (bbox or polygons)",
    "batch_size": "tiles per model call",
    "query": "search text",
    "top_k": "number of search hits",
    "threshold": "minimum class probability",
    "workers": "parallel worker processes",
    "detail": "map detail (tile, dense, windows, dense+windows)",
    "cells_per_tile": "output cells across one tile",
    "map_resolution": "output map cell size (map units)",
}
"""Every field an inference error may name, with what it is (front-ends map each to their label)."""

_MENTION = re.compile(r"\{([a-z_]+)\}")

Labels = Mapping[str, str]


def field_label(field: str, labels: Labels | None = None) -> str:
    """How ``field`` is called for the user: ``labels[field]``, else its plain name (``tile size``)."""
    if labels and field in labels:
        return labels[field]
    return field.replace("_", " ")


def word(text: str, labels: Labels | None = None) -> str:
    """``text`` with every ``{field}`` mention replaced by that field's label."""
    return _MENTION.sub(lambda m: field_label(m[1], labels) if m[1] in FIELDS else m[0], text)


class _FieldMessage:
    """A message plus the field it is about, worded on demand (shared by errors and warnings)."""

    message: str
    field: str | None

    def _set(self, message: str, field: str | None) -> None:
        if field is not None and field not in FIELDS:
            raise ValueError(f"unknown error field {field!r} (add it to rsclip_core.inference.errors.FIELDS)")
        self.message, self.field = str(message), field

    def worded(self, labels: Labels | None = None) -> str:
        """The message as a front-end shows it: ``<label of field>: <message>``."""
        text = word(self.message, labels)
        return f"{field_label(self.field, labels)}: {text}" if self.field else text

    def __str__(self) -> str:
        return self.worded()

    def __reduce__(self) -> Any:  # keep ``field`` across processes (batch workers)
        return (type(self), (self.message,), {"field": self.field, "message": self.message})


class RsclipError(_FieldMessage, Exception):
    """Base class of every error the inference engine raises on purpose."""

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        self._set(message, field)
        Exception.__init__(self, message)


class RsclipInputError(RsclipError, ValueError):
    """Bad input (raster, model, class file, option value): the message names the culprit."""


class RsclipFileNotFoundError(RsclipInputError, FileNotFoundError):
    """An input file or directory does not exist."""


class InvalidModelError(RsclipInputError, ModelDirError):
    """A model directory is missing, incomplete or corrupt."""


class OutputExistsError(RsclipInputError, FileExistsError):
    """An output exists and ``overwrite`` was not given."""


class RsclipCancelled(RsclipError):
    """The caller's ``cancel()`` callback asked to stop; nothing partial was written."""


class RsclipWarning(_FieldMessage, UserWarning):
    """Something works but probably not as the user expects (e.g. a raster without CRS)."""

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        self._set(message, field)
        UserWarning.__init__(self, message)


def describe_error(exc: BaseException, labels: Labels | None = None) -> str:
    """One line for the user: field-carrying errors/warnings worded with ``labels``, others as they are."""
    text = exc.worded(labels) if isinstance(exc, _FieldMessage) else str(exc)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


USER_ERRORS: tuple[type[BaseException], ...] = (RsclipError, ValueError, FileNotFoundError, FileExistsError,
                                                PermissionError)
"""Errors a user can act on from their one-line message (others are bugs: shown with their type)."""
