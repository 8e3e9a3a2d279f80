"""Training losses, one small module each, with a functional form and an ``nn.Module``.

* :func:`mef_ssim_loss` / :class:`MEFSSIMLoss`: 1 − MEF-SSIM against the sources, the
  definition :func:`textmef.metrics.mef_ssim` scores, differentiable (as MEF-Net trains);
* :func:`ssim_loss` / :class:`SSIMLoss`: 1 − SSIM against a reference, the definition of
  :func:`textmef.metrics.ssim`;
* :func:`colour_loss` / :class:`ColourLoss`: per-pixel RGB direction (hue/saturation)
  against a reference, brightness-invariant;
* :func:`clip_exposure_loss` / :class:`CLIPExposureLoss`: TextMEF's L_clip;
* :class:`FusionLoss`: the weighted sum stage 2 trains on.

Images are float tensors in [0, 1], (B, C, H, W). Losses compute in float32 (float64
inputs stay float64) and return the batch mean by default (``reduction="none"``: per image).
"""

from textmef.losses.clip_loss import CLIPExposureLoss, clip_exposure_loss
from textmef.losses.colour_loss import ColourLoss, colour_loss
from textmef.losses.composite import TERMS, FusionLoss
from textmef.losses.mef_ssim_loss import MEFSSIMLoss, mef_ssim_loss
from textmef.losses.ssim_loss import SSIMLoss, ssim_loss

__all__ = [
    "TERMS",
    "CLIPExposureLoss",
    "ColourLoss",
    "FusionLoss",
    "MEFSSIMLoss",
    "SSIMLoss",
    "clip_exposure_loss",
    "colour_loss",
    "mef_ssim_loss",
    "ssim_loss",
]
