"""Exceptions raised by nncf-ext. Every error names what was wrong: a config path or a tensor name."""

from __future__ import annotations


class NNCFExtError(Exception):
    """Base class of all nncf-ext errors."""


class ConfigError(NNCFExtError, ValueError):
    """A compression config is invalid; ``path`` locates the offending entry (``compression[0].schedule``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ModelError(NNCFExtError, ValueError):
    """The model, its weights or the example input cannot be compressed as asked."""


class CheckpointError(NNCFExtError, ValueError):
    """A checkpoint or serialized compression state is malformed or untrusted."""


class ExportError(NNCFExtError, RuntimeError):
    """Export to OpenVINO failed; nothing was left half written."""


class ParityError(ExportError):
    """The exported model's outputs differ from the torch model's beyond the tolerance."""


class DataError(NNCFExtError, ValueError):
    """A dataset on disk is missing or malformed; the message names the file."""
