"""The TextMEF fusion network (DESIGN.md sections 2-3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from textmef.nn.blocks import (
    AttentionMamba,
    CGAFusion,
    DeepFuseBlock,
    Encoder,
    MutualGuidedBlock,
    Refine,
    map_from_tokens,
    tokens_from_map,
)
from textmef.nn.mamba import Mamba
from textmef.ssm import BACKENDS


@dataclass(frozen=True)
class FusionNetConfig:
    """Architecture of a :class:`FusionNet`.

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FusionNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FusionNetConfig fields: {sorted(unknown)}")
        return cls(**data)


CONFIGS: dict[str, FusionNetConfig] = {
    "textmef": FusionNetConfig(),
    "textmef-tiny": FusionNetConfig(width=16, d_state=4),
    # The packaged checkpoint's size: what a 2-core CPU can train in an hour (MODEL_CARD.md).
    "textmef-c16": FusionNetConfig(width=16, d_state=4),
}


class FusionNet(nn.Module):
    """Fuse an under- and an over-exposed image: (B,3,H,W) x2 -> (B,3,H,W), unclamped."""

    def __init__(self, config: FusionNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FusionNetConfig()
        c, n, e = config.width, config.d_state, config.expand
        self.under_encoder = Encoder(c)
        self.over_encoder = Encoder(c)
        self.under_attention = AttentionMamba(c, n, e) if config.attention_mamba else None
        self.over_attention = AttentionMamba(c, n, e) if config.attention_mamba else None
        self.under_to_token = nn.Conv2d(c, c, 1)
        self.over_to_token = nn.Conv2d(c, c, 1)
        self.swap_blocks = nn.ModuleList(
            [MutualGuidedBlock(c, n, e) for _ in range(2)] if config.mutual_swap else []
        )
        if config.deep_fuse:
            self.under_deep_fuse = DeepFuseBlock(c, n, e)
            self.over_deep_fuse = DeepFuseBlock(c, n, e)
            self.fusion = CGAFusion(c)
        else:
            self.under_deep_fuse = self.over_deep_fuse = self.fusion = None
        self.refine = Refine(c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' init: every conv weight ~ N(0, 0.02); the rest keeps its defaults."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def _encode(self, image, encoder, attention, to_token):
        features = encoder(image)
        if attention is not None:
            features = attention(features) * features
        return tokens_from_map(to_token(features))

    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:  # noqa: D102
        height, width = under.shape[-2:]
        # channels_last makes the map <-> token reshapes free views and speeds up CPU convs.
        under = under.contiguous(memory_format=torch.channels_last)
        over = over.contiguous(memory_format=torch.channels_last)
        tok_u = self._encode(under, self.under_encoder, self.under_attention, self.under_to_token)
        tok_o = self._encode(over, self.over_encoder, self.over_attention, self.over_to_token)
        res_u = res_o = 0
        for block in self.swap_blocks:
            tok_u, tok_o, res_u, res_o = block(tok_u, tok_o, res_u, res_o)
        if self.fusion is not None:
            fused = self.fusion(
                self.under_deep_fuse(tok_u, res_u, height, width),
                self.over_deep_fuse(tok_o, res_o, height, width),
            )
        else:
            fused = map_from_tokens(tok_u + res_u + tok_o + res_o, height, width)
        return self.refine(fused) + under + over


def set_scan_backend(model: nn.Module, backend: str) -> None:
    """Choose the selective-scan backend of every Mamba block in ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
    for module in model.modules():
        if isinstance(module, Mamba):
            module.scan_backend = backend
