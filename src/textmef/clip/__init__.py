"""CLIP in plain PyTorch: config, model, tokenizer, weight loading, exposure prompts.

Nothing is loaded at import time: models are built from configs and weights read afterwards
(:func:`load_clip`); the tokenizer reads its vocabulary on first use.
"""

from textmef.clip.config import CLIP_CONFIGS, CLIPConfig, TextConfig, VisionConfig
from textmef.clip.loading import clip_fingerprint, download_clip, load_clip
from textmef.clip.model import CLIP, build_clip
from textmef.clip.prompts import PromptLearner, PromptSet, init_prompts, load_prompts
from textmef.clip.tokenizer import Tokenizer, get_tokenizer

__all__ = [
    "CLIP",
    "CLIP_CONFIGS",
    "CLIPConfig",
    "PromptLearner",
    "PromptSet",
    "TextConfig",
    "Tokenizer",
    "VisionConfig",
    "build_clip",
    "clip_fingerprint",
    "download_clip",
    "get_tokenizer",
    "init_prompts",
    "load_clip",
    "load_prompts",
]
