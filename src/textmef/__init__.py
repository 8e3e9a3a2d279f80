"""textmef: text-guided multi-exposure image fusion (TextMEF) that runs fast on CPU.

``textmef.fuse`` and ``textmef.load_model`` are imported lazily so that ``import textmef``
stays cheap (no torch, no numba compilation).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "fuse", "load_model"]


def __getattr__(name: str):
    if name in ("fuse", "load_model"):
        from textmef import api

        return getattr(api, name)
    raise AttributeError(f"module 'textmef' has no attribute {name!r}")
