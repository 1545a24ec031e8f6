"""Errors raised by ``rsclip_core.export``: each carries a one-line message naming its cause."""

from __future__ import annotations


class ExportError(ValueError):
    """Export cannot proceed (bad argument, model, checkpoint or output directory)."""


class UnknownModelError(ExportError):
    """The model name is not in the registry."""


class CheckpointNotFoundError(ExportError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CheckpointMismatchError(ExportError):
    """The checkpoint does not fit the model (other architecture, unreadable file)."""


class OutputExistsError(ExportError, FileExistsError):
    """The output directory exists and ``overwrite`` was not given."""


class ClassesFileError(ExportError):
    """The classes file is missing or malformed."""


class ParityError(ExportError):
    """An exported graph does not reproduce the torch model within tolerance."""
