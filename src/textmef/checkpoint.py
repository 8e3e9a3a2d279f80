"""Checkpoints: safetensors weights with the model config stored as JSON metadata.

Only safetensors files are read: they hold raw tensors, so loading one can never execute
code (a pickled ``.pt`` could).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from textmef.errors import CheckpointError
from textmef.models.fusionnet import FusionNet, FusionNetConfig

log = logging.getLogger(__name__)

FORMAT = "textmef-fusionnet"
PACKAGED_WEIGHTS = "textmef.safetensors"
_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl"}


@dataclass
class LoadReport:
    """What did not line up between a checkpoint and the model it was loaded into."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        return "; ".join(parts) or "all keys matched"


def save_checkpoint(
    model: FusionNet, path: str | Path, extra: dict[str, str] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict())}
    metadata.update(extra or {})
    return save_safetensors_atomic(model.state_dict(), path, metadata)


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write a safetensors file via a temp file in the same folder, then rename.

    A crash or a full disk therefore never leaves a partial file under ``path``.
    """
    from textmef.io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def packaged_weights_path() -> Path | None:
    """The checkpoint shipped inside the package, or None while none ships."""
    candidate = resources.files("textmef").joinpath("weights", PACKAGED_WEIGHTS)
    return Path(str(candidate)) if candidate.is_file() else None


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(path, "no such weights file")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, expected a .safetensors weights file")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise CheckpointError(
            path,
            "pickled checkpoints are refused (loading them can run "
            "arbitrary code); convert the weights to .safetensors",
        )
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from None


def read_checkpoint(path: str | Path) -> tuple[FusionNetConfig, dict[str, torch.Tensor], dict]:
    """Return (config, state dict, metadata) of a textmef checkpoint."""
    path = Path(path)
    with _open(path) as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "config" not in metadata:
        raise CheckpointError(path, "has no textmef config metadata (not a textmef checkpoint?)")
    try:
        config = FusionNetConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(path, f"invalid config metadata: {exc}") from None
    return config, tensors, metadata


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load matching tensors into ``model``; return the keys that did not match."""
    own = model.state_dict()
    report = LoadReport()
    usable = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state]
    model.load_state_dict(usable, strict=False)
    return report


def load_checkpoint(path: str | Path, strict: bool = True) -> tuple[FusionNet, dict]:
    """Build the model described by a checkpoint and load its weights.

    Args:
        path: A ``.safetensors`` file written by :func:`save_checkpoint`.
        strict: Raise :class:`CheckpointError` when any key is missing, unexpected or of the
            wrong shape; otherwise log a warning and keep the matching weights.

    Returns:
        (model in eval mode, checkpoint metadata).
    """
    config, state, metadata = read_checkpoint(path)
    model = FusionNet(config)
    report = load_state(model, state)
    if not report.clean:
        if strict:
            raise CheckpointError(path, f"does not match the model: {report.summary()}")
        log.warning("%s: %s", path, report.summary())
    return model.eval(), metadata
