"""Exceptions of the inference engine: one clear line naming the file or argument at fault."""

from __future__ import annotations

from rsclip_core.spec import ModelDirError


class RsclipError(Exception):
    """Base class of every error the inference engine raises on purpose."""


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


class RsclipWarning(UserWarning):
    """Something works but probably not as the user expects (e.g. a raster without CRS)."""
