"""Training losses."""

from textmef.losses.clip_loss import CLIPExposureLoss, clip_exposure_loss

__all__ = ["CLIPExposureLoss", "clip_exposure_loss"]
