"""Weights on disk, for any network: safetensors writes and reports of mismatched keys.

Shared by fusion checkpoints (:mod:`textmef.checkpoint`), CLIP loading and prompt files,
so that none of them has to import another's model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["LoadReport", "load_state", "save_safetensors_atomic"]


@dataclass
class LoadReport:
    """What did not line up between a state dict and the model it was loaded into."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when every key matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        """One line naming up to ``limit`` keys of each kind of mismatch."""
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


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load the tensors of ``state`` that match ``model``; report the keys that did not."""
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


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write a safetensors file via a temp file in the same folder, then rename.

    A crash or a full disk therefore never leaves a partial file under ``path``.
    """
    from safetensors.torch import save_file

    from textmef.io import atomic_path

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)
