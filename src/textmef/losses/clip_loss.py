"""CLIP exposure loss (TextMEF stage 2): L_clip = 1 − p(well-exposed | image)."""

from __future__ import annotations

import torch
from torch import nn

from textmef.clip.model import CLIP
from textmef.clip.prompts import PromptSet, prompt_logits


def clip_exposure_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, well_index: int = -1
) -> torch.Tensor:
    """Mean over the batch of 1 − softmax(100 · cos(image, prompts))[well].

    Args:
        image_features: Unit-norm CLIP image features, (B, E).
        text_features: Unit-norm prompt features, (K, E).
        well_index: Which prompt is the well-exposed one (last by convention).
    """
    probabilities = prompt_logits(image_features, text_features).softmax(dim=-1)
    return 1.0 - probabilities[:, well_index].mean()


class CLIPExposureLoss(nn.Module):
    """``nn.Module`` form of :func:`clip_exposure_loss` on [0, 1] RGB images (B, 3, H, W).

    The CLIP and the prompts are frozen; gradients flow only to the images. The whole batch
    goes through CLIP at once (the authors loop over images one by one).

    Args:
        clip: The CLIP the prompts were learned with.
        text_features: Unit-norm prompt features, (K, E).
        well_index: Which prompt is the well-exposed one.
    """

    text_features: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, clip: CLIP, text_features: torch.Tensor, well_index: int = -1) -> None:
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.register_buffer("text_features", text_features.detach().float().clone())
        self.well_index = well_index

    @classmethod
    def from_prompts(
        cls, clip: CLIP, prompts: PromptSet, fingerprint: str | None = None
    ) -> CLIPExposureLoss:
        """Build the loss after checking that ``prompts`` belong to ``clip``."""
        prompts.check_clip(clip, fingerprint)
        return cls(clip, prompts.text_features, prompts.well_index)

    def train(self, mode: bool = True) -> CLIPExposureLoss:
        # CLIP stays in eval mode even while the fusion network trains.
        super().train(mode)
        self.clip.eval()
        return self

    def well_probability(self, images: torch.Tensor) -> torch.Tensor:
        """p(well-exposed) per image, (B,)."""
        features = self.clip.image_features(images)
        logits = prompt_logits(features, self.text_features.to(features.dtype))
        return logits.softmax(dim=-1)[:, self.well_index]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.well_probability(images).mean()
