"""Architecture configs of the fusion network: frozen dataclasses, no torch import.

Kept apart from the network so that the model registry, the command line and checkpoint
metadata can name and describe models without loading PyTorch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["FusionNetConfig"]


@dataclass(frozen=True)
class FusionNetConfig:
    """Architecture of a :class:`~textmef.models.fusionnet.FusionNet`.

    Attributes:
        width: Base channel width C (64 in the paper).
        d_state: SSM state size N of every Mamba block.
        expand: Mamba expansion (d_inner = expand * C).
        attention_mamba: Keep the attention Mamba blocks (ablation "w/o A" when False).
        mutual_swap: Keep the two mutual-guided swap blocks ("w/o M" when False).
        deep_fuse: Keep the deep-fuse Mamba blocks and the CGA fusion ("w/o D" when False:
            the two streams are then added).
    """

    width: int = 64
    d_state: int = 16
    expand: int = 2
    attention_mamba: bool = True
    mutual_swap: bool = True
    deep_fuse: bool = True

    def __post_init__(self) -> None:
        if self.width < 2 or self.width % 2:
            raise ValueError(f"width must be an even number >= 2, got {self.width}")
        if self.d_state < 1 or self.expand < 1:
            raise ValueError("d_state and expand must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (stored as JSON in checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionNetConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown fields are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FusionNetConfig fields: {sorted(unknown)}")
        return cls(**data)

    def describe(self) -> str:
        """One line: width, state size and the ablation switches that are off."""
        text = f"C = {self.width}, d_state {self.d_state}, expand {self.expand}"
        off = [
            label
            for label, on in (
                ("w/o attention Mamba", self.attention_mamba),
                ("w/o mutual swap", self.mutual_swap),
                ("w/o deep fuse", self.deep_fuse),
            )
            if not on
        ]
        return text + (f" ({', '.join(off)})" if off else "")
