"""Fusion-network definitions built from frozen configs, and their registry.

The configs and the registry import no torch; the network itself (``FusionNet``) is
imported on first use so that naming a model stays cheap.
"""

from __future__ import annotations

from typing import Any

from textmef.models.config import FusionNetConfig
from textmef.models.registry import (
    DEFAULT_MODEL,
    PAPER_MODEL,
    create_model,
    get_model,
    list_models,
    model_config,
    register_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "PAPER_MODEL",
    "FusionNet",
    "FusionNetConfig",
    "create_model",
    "get_model",
    "list_models",
    "model_config",
    "register_model",
    "set_scan_backend",
]


def __getattr__(name: str) -> Any:
    if name in ("FusionNet", "set_scan_backend"):
        from textmef.models import fusionnet

        return getattr(fusionnet, name)
    raise AttributeError(f"module 'textmef.models' has no attribute {name!r}")
