"""The errors of checkpoint handling, and how long their lists get."""

from __future__ import annotations

__all__ = ["LIST_LIMIT", "CheckpointError", "DownloadError"]

LIST_LIMIT = 10  # how many items (keys, entries) an error message lists per category


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unsafe, corrupt, or the wrong architecture."""


class DownloadError(OSError):
    """Weights that could not be downloaded (offline, server unreachable, HTTP error)."""
