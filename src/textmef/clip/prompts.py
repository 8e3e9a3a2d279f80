"""Exposure prompts (TextMEF stage 1): learnable token embeddings read by a frozen CLIP.

Three variants, the paper's prompt ablation:

* ``learned`` — three learnable prompts: over-, under- and well-exposed (the paper's method);
* ``pos-neg`` — one learnable negative ("badly exposed": over and under together) and one
  learnable positive (well-exposed) prompt;
* ``fixed`` — handcrafted text prompts, nothing learned.

The well-exposed prompt is always the last class, so the CLIP loss reads ``p[..., -1]``
whatever the variant (as the authors' ``1 - probs[0][-1]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from textmef.clip.config import PROMPT_MODES, CLIPConfig
from textmef.clip.model import CLIP
from textmef.errors import CheckpointError

# Exposure classes of the training images, in the authors' label order.
EXPOSURES = ("over", "under", "well")
HANDCRAFTED = ("an over-exposed photo", "an under-exposed photo", "a well-exposed photo")
LOGIT_SCALE = 100.0
PROMPTS_FORMAT = "textmef-prompts/1"


def prompt_classes(mode: str) -> tuple[str, ...]:
    """The classes a prompt variant distinguishes, "well" last."""
    _check_mode(mode)
    return ("badly-exposed", "well") if mode == "pos-neg" else EXPOSURES


def class_index(mode: str, exposure: str) -> int:
    """Index of the prompt that an image of ``exposure`` ("over"/"under"/"well") should match."""
    if exposure not in EXPOSURES:
        raise ValueError(f"unknown exposure {exposure!r}; expected one of {EXPOSURES}")
    if mode == "pos-neg":
        return 1 if exposure == "well" else 0
    _check_mode(mode)
    return EXPOSURES.index(exposure)


def _check_mode(mode: str) -> None:
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {PROMPT_MODES}")


class PromptLearner(nn.Module):
    """K prompts held as token embeddings, turned into text features by a frozen CLIP.

    The CLIP is passed to each call rather than held, so this module's state dict is only
    the prompts. Each prompt is stored up to its end token: the text tower is causal, so the
    padding after it never influences the feature (see ``CLIP.encode_token_embeddings``).

    Args:
        embeddings: (K, T, W) token embeddings, T <= the CLIP's context length.
        eot_index: (K,) position of each prompt's end token.
        mode: One of :data:`PROMPT_MODES`.
        length: Learnable tokens per prompt (between the start and end tokens).
        texts: The handcrafted texts (``fixed`` mode), else empty.
    """

    # A buffer (``fixed`` mode) or a parameter (learnable modes); a buffer too.
    embeddings: torch.Tensor
    eot_index: torch.Tensor

    def __init__(
        self,
        embeddings: torch.Tensor,
        eot_index: torch.Tensor,
        mode: str,
        length: int,
        texts: Sequence[str] = (),
    ) -> None:
        super().__init__()
        _check_mode(mode)
        if embeddings.ndim != 3 or embeddings.shape[0] != len(prompt_classes(mode)):
            raise ValueError(
                f"{mode} prompts need ({len(prompt_classes(mode))}, T, W) "
                f"embeddings, got {tuple(embeddings.shape)}"
            )
        self.mode = mode
        self.length = length
        self.texts = tuple(texts)
        self.classes = prompt_classes(mode)
        if mode == "fixed":
            self.register_buffer("embeddings", embeddings.detach().clone())
        else:
            self.embeddings = nn.Parameter(embeddings.detach().clone())
        self.register_buffer("eot_index", eot_index.detach().clone().long())

    @property
    def well_index(self) -> int:
        return self.classes.index("well")

    def text_features(self, clip: CLIP) -> torch.Tensor:
        """Unit-norm prompt features, (K, embed_dim); differentiable w.r.t. the prompts."""
        return F.normalize(clip.encode_token_embeddings(self.embeddings, self.eot_index), dim=-1)

    def forward(self, clip: CLIP, image_features: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) = 100 · cos(image, prompt_k) for unit-norm image features (B, E)."""
        return prompt_logits(image_features, self.text_features(clip))


def prompt_logits(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """100 · cosine similarity; both inputs unit-norm, (B, E) and (K, E)."""
    return LOGIT_SCALE * image_features @ text_features.t()


def init_prompts(
    clip: CLIP,
    mode: str = "learned",
    length: int = 16,
    texts: Sequence[str] | None = None,
    tokenizer: Any = None,
    generator: torch.Generator | None = None,
) -> PromptLearner:
    """Fresh prompts for ``clip``, initialised as the authors do.

    Learnable prompts: the token embeddings of "X X … X" (``length`` times) over the whole
    context, overwritten by Xavier-normal on the (K, context, W) tensor — the authors' exact
    initialisation, whose scale therefore depends on the context length, not on ``length``.
    Only the part up to the placeholder's end token is kept (the rest cannot matter).

    Args:
        clip: The frozen CLIP the prompts will be read by.
        mode: One of :data:`PROMPT_MODES`.
        length: Learnable tokens per prompt (ignored for ``fixed``).
        texts: Handcrafted texts for ``fixed`` mode, over/under/well order
            (default :data:`HANDCRAFTED`).
        tokenizer: A :class:`textmef.clip.tokenizer.Tokenizer` (default: the packaged one).
        generator: Random generator for the initialisation (reproducible prompts).
    """
    _check_mode(mode)
    if tokenizer is None:
        from textmef.clip.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    context = clip.config.text.context_length
    if mode == "fixed":
        texts = tuple(texts or HANDCRAFTED)
        if len(texts) != 3:
            raise ValueError(f"fixed prompts need 3 texts (over, under, well), got {len(texts)}")
        tokens = tokenizer(list(texts), context_length=context)
        eot_index = tokens.argmax(dim=-1)
        with torch.no_grad():
            embeddings = clip.token_embedding(tokens[:, : int(eot_index.max()) + 1])
        return PromptLearner(embeddings.float(), eot_index, mode, 0, texts)
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, got {length}")
    placeholder = " ".join(["X"] * length)
    tokens = tokenizer([placeholder], context_length=context)
    eot = int(tokens.argmax(dim=-1)[0])
    count = len(prompt_classes(mode))
    full = torch.empty(count, context, clip.config.text.width)
    with torch.no_grad():
        full.copy_(clip.token_embedding(tokens).float().expand_as(full))
        _xavier_normal(full, generator)
    return PromptLearner(full[:, : eot + 1], torch.full((count,), eot), mode, length)


def _xavier_normal(tensor: torch.Tensor, generator: torch.Generator | None) -> None:
    # torch.nn.init.xavier_normal_ takes a generator only in recent releases; same formula.
    fan_in = tensor.shape[1] * tensor[0][0].numel()
    fan_out = tensor.shape[0] * tensor[0][0].numel()
    std = (2.0 / (fan_in + fan_out)) ** 0.5
    tensor.normal_(0.0, std, generator=generator)


# ---- prompt files ----------------------------------------------------------------------
@dataclass
class PromptSet:
    """Prompts read from a file, with the identity of the CLIP they belong to."""

    learner: PromptLearner
    text_features: torch.Tensor
    clip_config: CLIPConfig
    clip_fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def mode(self) -> str:
        return self.learner.mode

    @property
    def classes(self) -> tuple[str, ...]:
        return self.learner.classes

    @property
    def well_index(self) -> int:
        return self.learner.well_index

    def check_clip(self, clip: CLIP, fingerprint: str | None = None) -> None:
        """Raise :class:`CheckpointError` unless ``clip`` is the CLIP these prompts belong to.

        Prompts are points in one CLIP's token space: read by any other CLIP (another
        architecture, or the same one with other weights) they mean nothing.
        """
        if clip.config != self.clip_config:
            raise CheckpointError(
                self.path,
                "these prompts were learned with a different CLIP "
                f"architecture ({_describe(self.clip_config)}), "
                f"not {_describe(clip.config)}",
            )
        if fingerprint is None:
            from textmef.clip.loading import clip_fingerprint

            fingerprint = clip_fingerprint(clip)
        if fingerprint != self.clip_fingerprint:
            raise CheckpointError(
                self.path,
                "these prompts were learned with other CLIP weights "
                f"(fingerprint {self.clip_fingerprint[:16]}…, "
                f"given {fingerprint[:16]}…); use the CLIP file "
                "they were trained with, or train new prompts",
            )


def _describe(config: CLIPConfig) -> str:
    v, t = config.vision, config.text
    return (
        f"ViT patch {v.patch_size} width {v.width} x{v.layers}, text width {t.width} "
        f"x{t.layers}, embed {config.embed_dim}"
    )


def save_prompts(
    path: str | Path,
    learner: PromptLearner,
    clip: CLIP,
    fingerprint: str,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write prompts, their text features and their CLIP's identity to a safetensors file.

    Args:
        path: Destination, written atomically.
        learner: The prompts.
        clip: The CLIP they were learned with (its config is stored, and it computes the
            stored text features).
        fingerprint: ``clip_fingerprint(clip)``, the CLIP's weight identity.
        info: JSON-serialisable facts to keep (training recipe, accuracy, data).
    """
    from textmef.serialization import save_safetensors_atomic

    with torch.no_grad():
        features = learner.text_features(clip)
    metadata = {
        "format": PROMPTS_FORMAT,
        "mode": learner.mode,
        "classes": json.dumps(list(learner.classes)),
        "length": str(learner.length),
        "texts": json.dumps(list(learner.texts)),
        "clip_config": clip.config.to_json(),
        "clip_fingerprint": fingerprint,
        "info": json.dumps(info or {}, sort_keys=True),
    }
    tensors = {
        "embeddings": learner.embeddings.float(),
        "eot_index": learner.eot_index,
        "text_features": features.float(),
    }
    return save_safetensors_atomic(tensors, path, metadata)


def load_prompts(path: str | Path) -> PromptSet:
    """Read a file written by :func:`save_prompts`; errors name the file and the problem."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            path,
            "is a directory, expected a prompts .safetensors file"
            if path.is_dir()
            else "no such prompts file",
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({exc})") from None
    if metadata.get("format") != PROMPTS_FORMAT:
        raise CheckpointError(
            path, f"is not a textmef prompts file (format {metadata.get('format')!r})"
        )
    try:
        learner = PromptLearner(
            tensors["embeddings"],
            tensors["eot_index"],
            metadata["mode"],
            int(metadata["length"]),
            json.loads(metadata["texts"]),
        )
        return PromptSet(
            learner=learner,
            text_features=tensors["text_features"],
            clip_config=CLIPConfig.from_json(metadata["clip_config"]),
            clip_fingerprint=metadata["clip_fingerprint"],
            info=json.loads(metadata.get("info", "{}")),
            path=path,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(path, f"damaged prompts file ({exc!r})") from None
