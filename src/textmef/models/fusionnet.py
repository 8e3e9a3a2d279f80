"""The TextMEF fusion network (docs/design.md §2-3)."""

from __future__ import annotations

import torch
from torch import nn

from textmef.models.config import FusionNetConfig
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
        # None when the deep_fuse ablation switch is off (tokens are then summed).
        self.under_deep_fuse: DeepFuseBlock | None
        self.over_deep_fuse: DeepFuseBlock | None
        self.fusion: CGAFusion | None
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
            assert self.under_deep_fuse is not None and self.over_deep_fuse is not None
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
