"""CLIP in plain PyTorch: config, model, tokenizer, weight loading, prompts.

Nothing is loaded at import time: models are built from configs and weights read afterwards.
"""

from textmef.clip.config import CLIP_CONFIGS, CLIPConfig, TextConfig, VisionConfig
from textmef.clip.model import CLIP, build_clip

__all__ = ["CLIP", "CLIP_CONFIGS", "CLIPConfig", "TextConfig", "VisionConfig", "build_clip"]
