"""Errors raised by the checkpoint frontends."""

from __future__ import annotations

__all__ = ["ModelFormatError"]


class ModelFormatError(ValueError):
    """A checkpoint file or folder is missing, malformed or uses an unsupported feature.

    The message is one line and names the file (and the tensor or field, when there is one), so
    the CLI can print it as is.
    """
