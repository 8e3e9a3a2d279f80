"""Datasets and image-folder helpers for training."""

from textmef.data.folders import list_images, split_holdout

__all__ = ["list_images", "split_holdout"]
