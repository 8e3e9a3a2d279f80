"""The one registry of fusion-network architectures: name -> config.

Checkpoints store the name next to the config, ``textmef info`` and ``textmef train`` take
names from here, and tests build the tiny variant. No torch import: the command line lists
the names without loading PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from textmef.errors import InputError
from textmef.models.config import FusionNetConfig

if TYPE_CHECKING:
    from textmef.models.fusionnet import FusionNet

__all__ = [
    "CUSTOM_MODEL",
    "DEFAULT_MODEL",
    "PAPER_MODEL",
    "ModelEntry",
    "create_model",
    "get_model",
    "list_models",
    "model_config",
    "name_of_config",
    "register_model",
]

PAPER_MODEL = "textmef"
# The architecture of the checkpoint that ships in the package (what `textmef fuse` uses).
DEFAULT_MODEL = "textmef-c32"
# Stored in checkpoints whose config matches no registered model (e.g. a width override).
CUSTOM_MODEL = "custom"


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture.

    Attributes:
        name: the registry key, stored in checkpoints.
        config: the architecture.
        description: one line for ``textmef info``.
    """

    name: str
    config: FusionNetConfig
    description: str


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, config: FusionNetConfig, description: str) -> ModelEntry:
    """Add an architecture under ``name``.

    Raises:
        ValueError: the name is taken, or another name already has the same config (two
            names for one architecture would make checkpoint names ambiguous).
    """
    if name in _MODELS or name == CUSTOM_MODEL:
        raise ValueError(f"model name {name!r} is already registered")
    twin = name_of_config(config)
    if twin is not None:
        raise ValueError(f"model {name!r} has the same config as {twin!r}")
    entry = ModelEntry(name, config, description)
    _MODELS[name] = entry
    return entry


def list_models() -> list[str]:
    """Registered names, in registration order."""
    return list(_MODELS)


def get_model(name: str) -> ModelEntry:
    """The entry called ``name``.

    Raises:
        InputError: no such model (the message lists the known names).
    """
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(_MODELS)
        raise InputError(None, f"unknown model {name!r}; known: {known}") from None


def model_config(name: str) -> FusionNetConfig:
    """The config registered as ``name`` (see :func:`get_model` for errors)."""
    return get_model(name).config


def name_of_config(config: FusionNetConfig) -> str | None:
    """The registered name whose config equals ``config``, or None."""
    for entry in _MODELS.values():
        if entry.config == config:
            return entry.name
    return None


def create_model(name: str, **overrides: Any) -> FusionNet:
    """A freshly initialised network of the registered architecture ``name``.

    Args:
        name: a registered model name.
        **overrides: config fields to change (e.g. ``width=32``).
    """
    import dataclasses

    from textmef.models.fusionnet import FusionNet

    return FusionNet(dataclasses.replace(model_config(name), **overrides))


register_model(
    PAPER_MODEL,
    FusionNetConfig(),
    "the paper's network, C = 64, d_state 16; what `textmef train` trains by default",
)
register_model(
    "textmef-c16",
    FusionNetConfig(width=16, d_state=4),
    "the paper's architecture at C = 16, d_state 4: the 0.2 packaged checkpoint, "
    "what a 2-core CPU trains in an hour (scripts/ship_model_c16.py)",
)
register_model(
    DEFAULT_MODEL,
    FusionNetConfig(width=32, d_state=8),
    "the paper's architecture at C = 32, d_state 8; the packaged checkpoint, "
    "9,200 steps over several CPU sessions: weights/MODEL_CARD.md",
)
register_model(
    "textmef-tiny",
    FusionNetConfig(width=16, d_state=2),
    "C = 16, d_state 2: for tests and smoke runs only",
)
