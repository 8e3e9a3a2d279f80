"""CLIP (Radford et al. 2021) in plain PyTorch, with OpenAI's parameter names.

Parameter names follow OpenAI's released state dicts (``visual.transformer.resblocks.0.attn.
in_proj_weight`` ...), which open_clip shares, so those load without renaming; Hugging Face
checkpoints are renamed by :mod:`textmef.clip.loading`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from textmef.clip.config import CLIP_MEAN, CLIP_STD, CLIPConfig, VisionConfig


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Written out so that it can use ``scaled_dot_product_attention`` in training too (the
    stock module only takes its fused path without gradients).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: attention then a 4x MLP with QuickGELU."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks on (B, L, W) tokens."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower: patchify, class token, transformer, projection."""

    def __init__(self, config: VisionConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(config.grid**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed_dim))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """Both CLIP towers; built from a :class:`CLIPConfig`, weights loaded afterwards.

    Image inputs follow the package convention (RGB float in [0, 1], (B, 3, H, W));
    :meth:`image_features` resizes and normalises them differentiably.
    """

    pixel_mean: torch.Tensor  # buffers, registered in __init__
    pixel_std: torch.Tensor

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        text = config.text
        self.visual = VisionTransformer(config.vision, config.embed_dim)
        self.token_embedding = nn.Embedding(text.vocab_size, text.width)
        self.positional_embedding = nn.Parameter(torch.zeros(text.context_length, text.width))
        self.transformer = Transformer(text.width, text.layers, text.heads)
        self.ln_final = nn.LayerNorm(text.width)
        self.text_projection = nn.Parameter(torch.zeros(text.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer(
            "pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenAI's initialisation; gives the random tiny CLIP the tests use a sane scale."""
        vision, text = self.config.vision, self.config.text
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        scale = vision.width**-0.5
        nn.init.normal_(self.visual.conv1.weight, std=scale)
        nn.init.normal_(self.visual.class_embedding, std=scale)
        nn.init.normal_(self.visual.positional_embedding, std=scale)
        nn.init.normal_(self.visual.proj, std=scale)
        nn.init.normal_(self.text_projection, std=text.width**-0.5)
        for tower in (self.visual.transformer, self.transformer):
            proj_std = tower.width**-0.5 * (2 * tower.layers) ** -0.5
            for block in tower.resblocks:
                # By name: ModuleList and Sequential hand back untyped modules.
                param = block.get_parameter
                nn.init.normal_(param("attn.in_proj_weight"), std=tower.width**-0.5)
                nn.init.zeros_(param("attn.in_proj_bias"))
                nn.init.normal_(param("attn.out_proj.weight"), std=proj_std)
                nn.init.zeros_(param("attn.out_proj.bias"))
                nn.init.normal_(param("mlp.c_fc.weight"), std=(2 * tower.width) ** -0.5)
                nn.init.normal_(param("mlp.c_proj.weight"), std=proj_std)
        with torch.no_grad():
            self.logit_scale.fill_(math.log(1 / 0.07))

    # ---- images -------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize [0, 1] RGB images to the tower's input size and apply CLIP's normalisation.

        Differentiable (bilinear with antialiasing, like torchvision's ``Resize`` on tensors),
        so stage 1's cached features and stage 2's loss see images prepared the same way.
        """
        size = self.config.vision.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        return (images - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed already normalised, correctly sized pixels (OpenAI's ``encode_image``)."""
        return self.visual(pixels.to(self.visual.conv1.weight.dtype))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings of [0, 1] RGB images of any size, shape (B, embed_dim)."""
        return F.normalize(self.encode_image(self.preprocess(images)), dim=-1)

    # ---- text ---------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed token ids (B, context_length); the end token is the highest id in a row."""
        eot_index = tokens.argmax(dim=-1)
        cut = int(eot_index.max()) + 1
        return self.encode_token_embeddings(self.token_embedding(tokens[:, :cut]), eot_index)

    def encode_token_embeddings(
        self, embeddings: torch.Tensor, eot_index: torch.Tensor
    ) -> torch.Tensor:
        """Run the text tower on token embeddings (B, L, W), e.g. learnable prompts.

        The tower is causal, so the end token's output depends only on the tokens up to it:
        a sequence cut right after its last end token (L < context_length) gives exactly the
        features of the zero-padded full context, at a fraction of the cost.

        Args:
            embeddings: Token embeddings, L <= context_length.
            eot_index: (B,) position of each row's end token, whose output is the feature.
        """
        length = embeddings.shape[1]
        if length > self.config.text.context_length:
            raise ValueError(
                f"{length} tokens exceed the context length {self.config.text.context_length}"
            )
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        x = self.ln_final(self.transformer(x, causal=True))
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, eot_index.to(x.device)] @ self.text_projection

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B_images, B_texts) = logit_scale · cos(image, text), as OpenAI's CLIP."""
        image = self.image_features(images)
        text = F.normalize(self.encode_text(tokens), dim=-1)
        return self.logit_scale.exp() * image @ text.t()


def build_clip(config: CLIPConfig | str) -> CLIP:
    """A randomly initialised CLIP from a config or a preset name ("ViT-B-32", "tiny")."""
    from textmef.clip.config import CLIP_CONFIGS

    if isinstance(config, str):
        if config not in CLIP_CONFIGS:
            raise ValueError(f"unknown CLIP config {config!r}; known: {sorted(CLIP_CONFIGS)}")
        config = CLIP_CONFIGS[config]
    return CLIP(config)
