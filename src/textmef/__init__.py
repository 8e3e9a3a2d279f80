"""textmef: text-guided multi-exposure image fusion (TextMEF) that runs fast on CPU.

``textmef.fuse``, ``textmef.fuse_stack`` and ``textmef.load_model`` are imported lazily so
that ``import textmef`` stays cheap (no torch, no numba compilation).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.3.0"

__all__ = ["__version__", "fuse", "fuse_stack", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("fuse", "load_model"):
        from textmef import api

        return getattr(api, name)
    if name == "fuse_stack":
        from textmef.stack import fuse_stack

        return fuse_stack
    raise AttributeError(f"module 'textmef' has no attribute {name!r}")
