"""CLIP in plain PyTorch: config, model, tokenizer, weight loading, exposure prompts.

Nothing is loaded at import time: models are built from configs and weights read afterwards
(:func:`load_clip`); the tokenizer reads its vocabulary on first use. The names below are
imported from their submodules on first use, so ``textmef.clip.config`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "CLIP",
    "CLIP_CONFIGS",
    "PROMPT_MODES",
    "CLIPConfig",
    "PromptLearner",
    "PromptSet",
    "TextConfig",
    "Tokenizer",
    "VisionConfig",
    "build_clip",
    "clip_cache_dir",
    "clip_fingerprint",
    "download_clip",
    "find_clip_file",
    "get_tokenizer",
    "init_prompts",
    "load_clip",
    "load_prompts",
]

_HOMES = {
    "CLIP_CONFIGS": "config",
    "PROMPT_MODES": "config",
    "CLIPConfig": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "clip_cache_dir": "loading",
    "clip_fingerprint": "loading",
    "download_clip": "loading",
    "find_clip_file": "loading",
    "load_clip": "loading",
    "CLIP": "model",
    "build_clip": "model",
    "PromptLearner": "prompts",
    "PromptSet": "prompts",
    "init_prompts": "prompts",
    "load_prompts": "prompts",
    "Tokenizer": "tokenizer",
    "get_tokenizer": "tokenizer",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"textmef.clip.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'textmef.clip' has no attribute {name!r}")
