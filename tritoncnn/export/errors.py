"""The errors an export raises: each carries one line that says what is wrong and what to do."""

from __future__ import annotations


class ExportError(ValueError):
    """An export input is missing, corrupt or unusable (the message names the file and the fix)."""


class UnsupportedOpError(ExportError):
    """A module of the model has no mapping to the target format (nothing was written)."""


class ParityError(ExportError):
    """The exported model does not compute what the tritoncnn model computes (nothing was kept)."""
