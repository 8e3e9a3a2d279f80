"""Limits of ``textmef serve`` (no Flask import: the command line reads the defaults)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_RESULTS",
    "DEFAULT_MAX_UPLOAD_MB",
    "PREVIEW_SIDE",
]

DEFAULT_MAX_UPLOAD_MB = 200
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FILES = 9
DEFAULT_MAX_RESULTS = 4
PREVIEW_SIDE = 1600
