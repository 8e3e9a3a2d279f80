"""Frozen configs for the CLIP towers; models are built from these, weights loaded afterwards."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# How stage 1 builds its prompts (the paper's ablation): three learnable prompts, one
# learnable negative plus one positive, or handcrafted texts.
PROMPT_MODES = ("learned", "pos-neg", "fixed")


@dataclass(frozen=True)
class VisionConfig:
    """Vision transformer (ViT) tower.

    Attributes:
        image_size: Side of the square input in pixels.
        patch_size: Side of one patch; the token grid is ``image_size // patch_size`` square.
        width: Token width.
        layers: Number of residual attention blocks.
        heads: Attention heads per block.
    """

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer tower.

    Attributes:
        context_length: Tokens per prompt, including start and end tokens.
        vocab_size: BPE vocabulary size.
        width: Token width (the width of a learnable prompt token).
        layers: Number of residual attention blocks.
        heads: Attention heads per block.
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8


@dataclass(frozen=True)
class CLIPConfig:
    """Both towers and the shared embedding width.

    Attributes:
        embed_dim: Width of the joint image-text embedding.
        vision: Vision tower config.
        text: Text tower config.
    """

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLIPConfig:
        return cls(
            embed_dim=int(data["embed_dim"]),
            vision=VisionConfig(**data["vision"]),
            text=TextConfig(**data["text"]),
        )

    @classmethod
    def from_json(cls, text: str) -> CLIPConfig:
        return cls.from_dict(json.loads(text))


CLIP_CONFIGS: dict[str, CLIPConfig] = {
    # OpenAI's ViT-B/32, the CLIP TextMEF uses.
    "ViT-B-32": CLIPConfig(),
    # A few hundred kilobytes of transformer plus the token table: for tests only.
    "tiny": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=224, patch_size=32, width=32, layers=2, heads=2),
        text=TextConfig(width=32, layers=2, heads=2),
    ),
}

# CLIP's input normalisation (OpenAI's released statistics).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
