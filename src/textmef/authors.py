"""The authors' checkpoint layouts, both ways.

The paper's code saves its fusion network as a bare state dict of ``FusionNet(base_filter=64)``
(``epoch_400_G.pth``) and its stage-1 prompts as a ``DataParallel`` state dict
(``best_prompt_round0.pth``). This module maps their key names to ours and back, without
running any of their code: files are read with ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only.

Their network holds 45,696 values that never reach the output (docs/design.md §2): the
encoders' unused 1x1 ``identity`` convs, LayerNorms built but never called in the patch
embeddings, an unused third token embedding (``f_to_token``) and an unused extra input
projection in the two deep-fuse Mambas. They are dropped on the way in (and listed), and
filled as the authors' initialisation would fill them on the way back, so their
``load_state_dict`` accepts the file strictly.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textmef.errors import CheckpointError
from textmef.models.config import FusionNetConfig

__all__ = [
    "AUTHORS_PROMPT_LENGTH",
    "AUTHORS_PROMPT_ROWS",
    "PICKLE_SUFFIXES",
    "AuthorsConversion",
    "PromptConversion",
    "authors_dead_keys",
    "from_authors_prompts",
    "from_authors_state",
    "is_authors_prompts",
    "key_pairs",
    "read_authors_file",
    "to_authors_state",
]

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".bin", ".pkl"})
# Their Mamba blocks: projections on the block, scan parameters per direction.
_SCAN = (
    "A_log",
    "D",
    "conv1d.weight",
    "conv1d.bias",
    "x_proj.weight",
    "dt_proj.weight",
    "dt_proj.bias",
)
_BACKWARD = {
    "A_log": "A_b_log",
    "D": "D_b",
    "conv1d.weight": "conv1d_b.weight",
    "conv1d.bias": "conv1d_b.bias",
    "x_proj.weight": "x_proj_b.weight",
    "dt_proj.weight": "dt_proj_b.weight",
    "dt_proj.bias": "dt_proj_b.bias",
}
# Our stream and the number of the authors' attention_N / deepfusionN for it.
_SIDES = (("under", "1"), ("over", "2"))
_ATTENTION_CONVS = (
    ("fe1", "fe1"),
    ("fe2", "fe2"),
    ("att_1", "sAtt_1"),
    ("att_2", "sAtt_2"),
    ("att_3", "sAtt_3"),
    ("att_4", "sAtt_4"),
    ("att_5", "sAtt_5"),
    ("level_1", "sAtt_L1"),
    ("level_2", "sAtt_L2"),
    ("level_3", "sAtt_L3"),
)


@dataclass(frozen=True)
class AuthorsConversion:
    """A state dict converted from the authors' layout.

    Attributes:
        config: the architecture the tensors describe.
        state: our state dict (every live tensor, renamed).
        dropped: the authors' keys that never reach the output, with their value counts.
    """

    config: FusionNetConfig
    state: dict[str, torch.Tensor]
    dropped: dict[str, int]

    @property
    def dropped_values(self) -> int:
        """How many values the dropped tensors held."""
        return sum(self.dropped.values())


def _mamba(ours: str, theirs: str, bidirectional: bool = False) -> Iterator[tuple[str, str]]:
    yield f"{ours}.in_proj.weight", f"{theirs}.in_proj.weight"
    yield f"{ours}.out_proj.weight", f"{theirs}.out_proj.weight"
    for name in _SCAN:
        yield f"{ours}.forward_branch.{name}", f"{theirs}.{name}"
        if bidirectional:
            yield f"{ours}.backward_branch.{name}", f"{theirs}.{_BACKWARD[name]}"


def _conv(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
    yield f"{ours}.weight", f"{theirs}.weight"
    yield f"{ours}.bias", f"{theirs}.bias"


def _channel_attention(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
    yield from _conv(f"{ours}.squeeze", f"{theirs}.conv_du.0")
    yield from _conv(f"{ours}.excite", f"{theirs}.conv_du.2")
    yield from _conv(f"{ours}.process.0", f"{theirs}.process.0")
    yield from _conv(f"{ours}.process.2", f"{theirs}.process.2")


def key_pairs() -> list[tuple[str, str]]:
    """(our key, the authors' key) for every live tensor of the full network."""
    pairs: list[tuple[str, str]] = []
    for side, n in _SIDES:
        pairs += _conv(f"{side}_encoder.0", f"{side}_encoder.0")
        for conv in ("conv_1", "conv_2", "norm"):
            pairs += _conv(f"{side}_encoder.1.{conv}", f"{side}_encoder.1.{conv}")
        ours, theirs = f"{side}_attention", f"attention_{n}"
        for a, b in _ATTENTION_CONVS:
            pairs += _conv(f"{ours}.{a}", f"{theirs}.{b}")
        for pool, mamba in (("max", "mamba_1"), ("avg", "mamba_2")):
            pairs += _conv(f"{ours}.{pool}_to_token", f"{theirs}.{pool}_to_token.proj")
            pairs += _conv(f"{ours}.mamba_{pool}.norm", f"{theirs}.{mamba}.norm.body")
            pairs += _mamba(f"{ours}.mamba_{pool}.mamba", f"{theirs}.{mamba}.encoder")
        pairs += _conv(f"{side}_to_token", f"{side}_to_token.proj")
    for i in (0, 1):
        block, theirs = f"swap_blocks.{i}", f"swap_mamba{i + 1}"
        pairs += _conv(f"{block}.norm_under", f"{theirs}.norm1.body")
        pairs += _conv(f"{block}.norm_over", f"{theirs}.norm2.body")
        pairs += _mamba(f"{block}.mamba_under", f"{theirs}.underencoder")
        pairs += _mamba(f"{block}.mamba_over", f"{theirs}.overencoder")
    for side, n in _SIDES:
        ours, theirs = f"{side}_deep_fuse", f"deepfusion{n}"
        pairs += _conv(f"{ours}.norm", f"{theirs}.norm.body")
        pairs += _mamba(f"{ours}.mamba", f"{theirs}.cross_mamba", bidirectional=True)
        pairs += _conv(f"{ours}.dwconv", f"{theirs}.dwconv")
    pairs += _conv("fusion.spatial", "deepfusion3.sa.sa")
    pairs += _channel_attention("fusion.channel", "deepfusion3.ca")
    pairs += _conv("fusion.pixel", "deepfusion3.pa.pa2")
    pairs += _conv("fusion.project", "deepfusion3.conv")
    pairs += _conv("refine.conv_in", "refine.conv_in")
    pairs += _channel_attention("refine.attention", "refine.process.0")
    pairs += _conv("refine.conv_out", "refine.conv_last")
    return pairs


def authors_dead_keys(config: FusionNetConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """The authors' keys that never reach the output: name -> (shape, how their code inits it).

    ``how`` is ``conv`` (N(0, 0.02), their init of every conv weight), ``bias`` (PyTorch's
    default conv bias, uniform ±1/sqrt(fan_in)), ``ones`` (a LayerNorm weight) or ``linear``
    (PyTorch's default Linear weight, uniform ±1/sqrt(fan_in)).
    """
    c, inner = config.width, config.expand * config.width
    dead: dict[str, tuple[tuple[int, ...], str]] = {}
    for side, _ in _SIDES:
        dead[f"{side}_encoder.1.identity.weight"] = ((c, c, 1, 1), "conv")
        dead[f"{side}_encoder.1.identity.bias"] = ((c,), "bias")
    for _, n in _SIDES:
        for pool in ("max", "avg"):
            dead[f"attention_{n}.{pool}_to_token.norm.body.weight"] = ((c,), "ones")
    for side, _ in _SIDES:
        dead[f"{side}_to_token.norm.body.weight"] = ((c,), "ones")
    dead["f_to_token.proj.weight"] = ((c, c, 1, 1), "conv")
    dead["f_to_token.proj.bias"] = ((c,), "bias")
    dead["f_to_token.norm.body.weight"] = ((c,), "ones")
    for _, n in _SIDES:
        dead[f"deepfusion{n}.cross_mamba.in_proj_extra.weight"] = ((2 * inner, c), "linear")
    return dead


def is_authors_prompts(state: Mapping[str, Any]) -> bool:
    """Whether a state dict is the authors' stage-1 prompts (``Prompts.state_dict()``)."""
    return "embedding_prompt" in _strip_module(state)


def _strip_module(state: Mapping[str, Any]) -> dict[str, Any]:
    # DataParallel prefixes every key with "module."; the fusion network's file has none.
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def read_authors_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read one of the authors' ``.pth`` files as a flat dict of tensors, safely.

    Raises:
        CheckpointError: missing, a pickle that needs code to load, truncated or damaged, or
            not a flat dict of tensors.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "no such weights file")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, expected a .pth weights file")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are noise here
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = next((line for line in lines if "WeightsUnpickler" in line), type(exc).__name__)
        raise CheckpointError(
            path,
            "is not a plain state dict of tensors: it would need code to unpickle, which "
            f"textmef never runs ({why[:160]})",
        ) from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"is truncated or damaged ({detail[:160]})") from None
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            path, f"holds a {type(state).__name__}, not a state dict (a dict of tensors)"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(
            path, f"is not a flat state dict of tensors (e.g. entry {bad[0]!r} is not a tensor)"
        )
    return _strip_module(state)


def _infer_config(path: Path, state: Mapping[str, torch.Tensor]) -> FusionNetConfig:
    try:
        width = int(state["under_encoder.0.weight"].shape[0])
        d_state = int(state["attention_1.mamba_1.encoder.A_log"].shape[1])
        inner = int(state["attention_1.mamba_1.encoder.A_log"].shape[0])
    except (KeyError, IndexError):
        sample = ", ".join(sorted(state)[:3])
        raise CheckpointError(
            path,
            f"is not a state dict of the authors' TextMEF FusionNet (keys such as {sample}; "
            "expected under_encoder.*, attention_1.*, deepfusion1.*, ...)",
        ) from None
    try:
        return FusionNetConfig(width=width, d_state=d_state, expand=max(1, inner // width))
    except ValueError as exc:
        raise CheckpointError(path, f"describes no valid network ({exc})") from None


def _listing(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def from_authors_state(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike[str] | None = None
) -> AuthorsConversion:
    """Rename the authors' fusion-network state dict to ours; drop and list the dead values.

    Raises:
        CheckpointError: another network's state dict, missing or extra live keys, or a
            tensor of the wrong shape (the message names them).
    """
    from textmef.models.fusionnet import FusionNet

    where = Path(path) if path is not None else None
    state = _strip_module(state)
    config = _infer_config(where or Path("state dict"), state)
    dead = authors_dead_keys(config)
    pairs = key_pairs()
    expected = {theirs for _, theirs in pairs}
    missing = sorted(k for k in expected if k not in state)
    unknown = sorted(k for k in state if k not in expected and k not in dead)
    if len(missing) > len(expected) // 2:
        raise CheckpointError(
            where,
            f"is not a state dict of the authors' TextMEF FusionNet ({len(missing)} of "
            f"{len(expected)} keys missing, e.g. {_listing(missing, 3)})",
        )
    if missing or unknown:
        parts = [
            f"missing {_listing(missing)}" if missing else "",
            f"unexpected {_listing(unknown)}" if unknown else "",
        ]
        raise CheckpointError(
            where,
            "does not match the authors' FusionNet layout: " + "; ".join(p for p in parts if p),
        )
    own = FusionNet(config).state_dict()
    converted: dict[str, torch.Tensor] = {}
    wrong = []
    for ours, theirs in pairs:
        tensor = state[theirs]
        if tuple(tensor.shape) != tuple(own[ours].shape):
            wrong.append(f"{theirs} {tuple(tensor.shape)} (expected {tuple(own[ours].shape)})")
        converted[ours] = tensor.detach().clone().float()
    for key, (shape, _) in dead.items():
        if key in state and tuple(state[key].shape) != shape:
            wrong.append(f"{key} {tuple(state[key].shape)} (expected {shape})")
    if wrong:
        raise CheckpointError(where, f"has tensors of the wrong shape: {_listing(wrong, 4)}")
    if set(converted) != set(own):  # the mapping must cover our network exactly
        raise CheckpointError(where, "internal error: the key mapping does not cover the model")
    dropped = {k: math.prod(state[k].shape) for k in dead if k in state}
    return AuthorsConversion(config=config, state=converted, dropped=dropped)


def _dead_value(shape: tuple[int, ...], how: str, generator: torch.Generator) -> torch.Tensor:
    if how == "ones":
        return torch.ones(shape)
    if how == "conv":
        return torch.empty(shape).normal_(0.0, 0.02, generator=generator)
    fan_in = math.prod(shape[1:]) if how == "linear" else shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def to_authors_state(
    state: Mapping[str, torch.Tensor], config: FusionNetConfig, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Our state dict in the authors' layout, dead entries filled as their init would.

    Args:
        state: a full state dict of ``FusionNet(config)``.
        config: its architecture: the paper's (C = 64, d_state 16, expand 2, no ablation),
            the only one the authors' ``FusionNet(base_filter=64)`` builds.
        seed: seeds the values of the dead entries (they never reach the output).

    Raises:
        CheckpointError: another architecture, or keys missing from ``state``.
    """
    paper = FusionNetConfig()
    if config != paper:
        raise CheckpointError(
            None,
            f"the authors' code builds FusionNet(base_filter=64) ({paper.describe()}); this "
            f"model is {config.describe()}, which it cannot load",
        )
    missing = [ours for ours, _ in key_pairs() if ours not in state]
    if missing:
        raise CheckpointError(None, f"the state dict lacks {_listing(missing)}")
    theirs = {t: state[o].detach().clone().float().contiguous() for o, t in key_pairs()}
    generator = torch.Generator().manual_seed(seed)
    for key, (shape, how) in authors_dead_keys(config).items():
        theirs[key] = _dead_value(shape, how, generator)
    return theirs


# ---- stage-1 prompts ---------------------------------------------------------------------
# Rows of the authors' `embedding_prompt`: their labels in data/dataloader_prompt_add.py.
AUTHORS_PROMPT_ROWS = ("over", "under", "well")
# Their `length_prompt` default: "X" repeated 16 times is the placeholder they tokenise.
AUTHORS_PROMPT_LENGTH = 16


@dataclass(frozen=True)
class PromptConversion:
    """The authors' prompts as a textmef prompt learner.

    Attributes:
        learner: the prompts (``learned`` mode, our class order).
        ignored: keys of the file that were not used (their copy of CLIP's text tower).
    """

    learner: Any
    ignored: list[str]


def from_authors_prompts(
    state: Mapping[str, torch.Tensor],
    clip: Any,
    *,
    length: int = AUTHORS_PROMPT_LENGTH,
    path: str | os.PathLike[str] | None = None,
) -> PromptConversion:
    """Turn the authors' ``embedding_prompt`` (3, 77, W) into a textmef prompt learner.

    Their prompts are token embeddings over the whole context; the text tower is causal, so
    only the tokens up to the placeholder's end token matter and only those are kept (as
    :func:`textmef.clip.prompts.init_prompts` does). The CLIP text tower their file also
    stores is ignored: the CLIP given here computes the features.

    Args:
        state: the file's state dict (``module.`` prefixes allowed).
        clip: the CLIP the prompts were learned with (a :class:`textmef.clip.model.CLIP`).
        length: learnable tokens per prompt (the authors' ``length_prompt``).
        path: the file, for messages.

    Raises:
        CheckpointError: no ``embedding_prompt``, a shape other than (3, T, W), or a width
            W other than the CLIP's text width.
    """
    from textmef.clip.prompts import EXPOSURES, PromptLearner
    from textmef.clip.tokenizer import get_tokenizer

    where = Path(path) if path is not None else None
    state = _strip_module(state)
    if "embedding_prompt" not in state:
        raise CheckpointError(where, "has no embedding_prompt: not the authors' prompt file")
    embeddings = state["embedding_prompt"]
    text = clip.config.text
    if embeddings.ndim != 3 or embeddings.shape[0] != len(AUTHORS_PROMPT_ROWS):
        raise CheckpointError(
            where, f"embedding_prompt is {tuple(embeddings.shape)}, expected (3, tokens, width)"
        )
    if embeddings.shape[2] != text.width:
        raise CheckpointError(
            where,
            f"the prompts are {embeddings.shape[2]} wide but this CLIP's text tower is "
            f"{text.width} wide: they were learned with another CLIP (the authors used "
            "OpenAI's ViT-B/32, text width 512)",
        )
    if embeddings.shape[1] > text.context_length:
        raise CheckpointError(
            where, f"{embeddings.shape[1]} prompt tokens exceed the context {text.context_length}"
        )
    tokens = get_tokenizer()([" ".join(["X"] * length)], context_length=text.context_length)
    eot = int(tokens.argmax(dim=-1)[0])
    if eot >= embeddings.shape[1]:
        raise CheckpointError(where, f"{length} prompt tokens do not fit its embeddings")
    rows = [AUTHORS_PROMPT_ROWS.index(exposure) for exposure in EXPOSURES]
    kept = embeddings[rows, : eot + 1].detach().clone().float()
    learner = PromptLearner(kept, torch.full((len(rows),), eot), "learned", length)
    ignored = sorted(k for k in state if k != "embedding_prompt")
    return PromptConversion(learner=learner, ignored=ignored)
