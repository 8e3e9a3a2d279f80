"""Fusion checkpoints: safetensors weights with the model's name and config as metadata.

Only safetensors files are read: they hold raw tensors, so loading one can never execute
code (a pickled ``.pt`` could).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from textmef.authors import PICKLE_SUFFIXES
from textmef.errors import CheckpointError
from textmef.models.config import FusionNetConfig
from textmef.models.fusionnet import FusionNet
from textmef.models.registry import CUSTOM_MODEL, name_of_config
from textmef.serialization import LoadReport, load_state, save_safetensors_atomic

__all__ = [
    "CheckpointInfo",
    "LoadReport",
    "convert_authors_checkpoint",
    "is_authors_checkpoint",
    "load_checkpoint",
    "load_state",
    "model_from_authors_state",
    "packaged_weights_path",
    "read_checkpoint",
    "read_checkpoint_info",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "textmef-fusionnet"
PACKAGED_WEIGHTS = "textmef.safetensors"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's header says, read without loading its tensors.

    Attributes:
        path: the file.
        model: the registered model name (``"custom"`` when the config matches none).
        config: the architecture.
        metadata: every metadata entry, as stored.
    """

    path: Path
    model: str
    config: FusionNetConfig
    metadata: dict[str, str]


def save_checkpoint(
    model: FusionNet, path: str | Path, extra: dict[str, str] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically (temp file, then rename).

    The metadata holds the model's registered name (or ``"custom"``) and its config, so
    :func:`load_checkpoint` rebuilds it without being told the architecture.
    """
    metadata = {
        "format": FORMAT,
        "model": name_of_config(model.config) or CUSTOM_MODEL,
        "config": json.dumps(model.config.to_dict()),
    }
    metadata.update(extra or {})
    return save_safetensors_atomic(model.state_dict(), path, metadata)


def packaged_weights_path() -> Path | None:
    """The checkpoint shipped inside the package (None in a build without it)."""
    candidate = resources.files("textmef").joinpath("weights").joinpath(PACKAGED_WEIGHTS)
    return Path(str(candidate)) if candidate.is_file() else None


def _open(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(path, "no such weights file")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, expected a .safetensors weights file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            path,
            "is a pickle; textmef reads the authors' .pth layout (see `textmef convert`) "
            "and otherwise only .safetensors",
        )
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from None


def _info(path: Path, metadata: dict[str, str]) -> CheckpointInfo:
    if "config" not in metadata:
        raise CheckpointError(path, "has no textmef config metadata (not a textmef checkpoint?)")
    try:
        config = FusionNetConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(path, f"invalid config metadata: {exc}") from None
    # Checkpoints written before names were stored are named by their config.
    name = metadata.get("model") or name_of_config(config) or CUSTOM_MODEL
    return CheckpointInfo(path=path, model=name, config=config, metadata=metadata)


def is_authors_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is (by its suffix) a pickled file, read as the authors' layout."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def convert_authors_checkpoint(path: str | Path) -> tuple[FusionNet, dict[str, str]]:
    """Build our model from the authors' ``epoch_N_G.pth``, in memory.

    Raises:
        CheckpointError: not the authors' fusion network (e.g. their prompt file), or a
            file that cannot be read safely.
    """
    from textmef.authors import read_authors_file

    path = Path(path)
    return model_from_authors_state(read_authors_file(path), path)


def model_from_authors_state(
    state: dict[str, torch.Tensor], path: Path
) -> tuple[FusionNet, dict[str, str]]:
    """:func:`convert_authors_checkpoint` for a state dict already read from ``path``."""
    from textmef.authors import from_authors_state, is_authors_prompts

    if is_authors_prompts(state):
        raise CheckpointError(
            path,
            "is the authors' stage-1 prompt file, not a fusion network; turn it into a "
            "textmef prompt file with `textmef convert FILE --clip CLIP_FILE -o "
            "prompts.safetensors`",
        )
    conversion = from_authors_state(state, path)
    model = FusionNet(conversion.config)
    model.load_state_dict(conversion.state, strict=True)
    metadata = {
        "format": FORMAT,
        "model": name_of_config(conversion.config) or CUSTOM_MODEL,
        "config": json.dumps(conversion.config.to_dict()),
        "source": f"authors' checkpoint {path.name}",
        "dropped": json.dumps(sorted(conversion.dropped)),
        "dropped_values": str(conversion.dropped_values),
    }
    return model.eval(), metadata


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Name, config and metadata of a checkpoint, from its header only.

    The authors' ``.pth`` files have no header: they are converted to answer.
    """
    path = Path(path)
    if is_authors_checkpoint(path):
        return _info(path, convert_authors_checkpoint(path)[1])
    with _open(path) as f:
        metadata = f.metadata() or {}
    return _info(path, metadata)


def read_checkpoint(
    path: str | Path,
) -> tuple[FusionNetConfig, dict[str, torch.Tensor], dict[str, str]]:
    """Return (config, state dict, metadata) of a textmef checkpoint."""
    path = Path(path)
    with _open(path) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return _info(path, metadata).config, tensors, metadata


def load_checkpoint(path: str | Path, strict: bool = True) -> tuple[FusionNet, dict[str, str]]:
    """Build the model described by a checkpoint and load its weights.

    Args:
        path: A ``.safetensors`` file written by :func:`save_checkpoint`, or the authors'
            ``.pth`` state dict (converted in memory, with one line logged saying so).
        strict: Raise :class:`CheckpointError` when any key is missing, unexpected or of the
            wrong shape; otherwise log a warning and keep the matching weights.

    Returns:
        (model in eval mode, checkpoint metadata).
    """
    if is_authors_checkpoint(path):
        model, metadata = convert_authors_checkpoint(path)
        name = Path(path).name
        log.info(
            "%s: the authors' checkpoint layout, converted in memory to the %s model (%s "
            "values that never reach the output dropped); `textmef convert %s -o "
            "model.safetensors` saves it",
            name,
            metadata["model"],
            f"{int(metadata['dropped_values']):,}",
            name,
        )
        return model, metadata
    config, state, metadata = read_checkpoint(path)
    model = FusionNet(config)
    report: LoadReport = load_state(model, state)
    if not report.clean:
        if strict:
            raise CheckpointError(path, f"does not match the model: {report.summary()}")
        log.warning("%s: %s", path, report.summary())
    return model.eval(), metadata
