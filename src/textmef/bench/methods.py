"""Fusion methods by name, each a callable ``method(frames) -> fused``.

``frames`` are (1, 3, H, W) float tensors in [0, 1], darkest first: the (under, over) pair of
a triplet dataset, or a whole exposure stack. The network fuses a stack with one of the
strategies of :mod:`textmef.stack` (``textmef`` uses the default one; ``textmef-progressive``
and ``textmef-extremes`` name them), Mertens and enfuse take every frame natively, ``mean``
averages them. So the benchmark fuses, times and scores the network and the classic
baselines the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from textmef import io
from textmef.errors import InputError
from textmef.inference import DEFAULT_OVERLAP, DEFAULT_TILE, fuse_tensors

__all__ = [
    "DEFAULT_METHODS",
    "METHOD_NAMES",
    "MethodOptions",
    "MethodUnavailableError",
    "TiledFusion",
    "build_method",
    "method_description",
    "unavailable_reason",
]

METHOD_NAMES = ("textmef", "textmef-progressive", "textmef-extremes", "mertens", "enfuse", "mean")
# What `textmef bench` runs when --methods is not given.
DEFAULT_METHODS = ("textmef", "mertens", "enfuse", "mean")
FrameFusion = Callable[[Sequence[torch.Tensor]], torch.Tensor]


class MethodUnavailableError(InputError):
    """A method cannot run on this machine (e.g. its binary is not installed)."""


class TiledFusion(nn.Module):
    """The fusion network run tile by tile (bounded memory at any size), clamped to [0, 1].

    Args:
        model: a network with ``forward(under, over)``.
        tile: tile side in pixels; None or 0 fuses the whole image at once.
        overlap: pixels shared by neighbouring tiles.
    """

    def __init__(
        self, model: nn.Module, tile: int | None = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
    ) -> None:
        super().__init__()
        self.model = model
        self.tile = tile
        self.overlap = overlap

    @torch.no_grad()
    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
        """Fuse on the model's device; the result comes back on the inputs' device."""
        device = next(self.model.parameters()).device
        fused = fuse_tensors(
            self.model, under.to(device), over.to(device), tile=self.tile, overlap=self.overlap
        )
        return fused.clamp_(0.0, 1.0).to(under.device)


@dataclass(frozen=True)
class MethodOptions:
    """How to build the network method (the baselines take no options).

    Attributes:
        weights: a ``.safetensors`` checkpoint; None uses the one shipped in the package.
        device: ``cpu`` or ``cuda``.
        tile: tile side for the network (0 or None: whole image).
        overlap: tile overlap in pixels.
        strategy: how ``textmef`` fuses stacks of 3+ frames (None: the package default).
    """

    weights: str | os.PathLike | None = None
    device: str = "cpu"
    tile: int | None = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    strategy: str | None = None


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run here, or None when it can."""
    if name not in METHOD_NAMES:
        return f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}"
    if name == "enfuse":
        from textmef.baselines.enfuse import enfuse_available

        if not enfuse_available():
            return (
                "the enfuse binary is not installed (Debian/Ubuntu package 'enfuse' or "
                "'enblend-enfuse'; or set TEXTMEF_ENFUSE to its path)"
            )
    return None


def build_method(name: str, options: MethodOptions | None = None) -> FrameFusion:
    """The fusion method called ``name`` (one of :data:`METHOD_NAMES`).

    Returns:
        ``method(frames) -> fused``: (1, 3, H, W) tensors in [0, 1], darkest first, in; the
        fused (1, 3, H, W) tensor in [0, 1] out.

    Raises:
        MethodUnavailableError: unknown name, or the method cannot run on this machine.
        CheckpointError: the network's weights cannot be loaded.
    """
    options = options or MethodOptions()
    reason = unavailable_reason(name)
    if reason:
        raise MethodUnavailableError(None, f"method {name}: {reason}")
    if name.startswith("textmef"):
        from textmef.api import load_model
        from textmef.stack import fuse_frames

        network = TiledFusion(
            load_model(options.weights, options.device), options.tile, options.overlap
        ).eval()
        strategy = _strategy(name, options)
        return lambda frames: fuse_frames(frames, network, strategy)
    if name == "mean":
        return lambda frames: torch.stack(list(frames)).clamp(0.0, 1.0).mean(dim=0)
    from textmef.baselines import enfuse_frames, mertens

    numpy_fusion = mertens if name == "mertens" else enfuse_frames
    return lambda frames: io.to_tensor(numpy_fusion([io.from_tensor(f) for f in frames]))


def _strategy(name: str, options: MethodOptions) -> str:
    from textmef.stack import DEFAULT_STRATEGY

    return name.split("-", 1)[1] if "-" in name else options.strategy or DEFAULT_STRATEGY


def method_description(name: str, options: MethodOptions | None = None) -> str:
    """One line saying exactly what ran, for reports (checkpoint, binary version)."""
    options = options or MethodOptions()
    if name.startswith("textmef"):
        from textmef.checkpoint import packaged_weights_path

        weights = options.weights or packaged_weights_path()
        tiles = (
            f"tiles {options.tile} px, overlap {options.overlap}" if options.tile else "whole image"
        )
        return (
            f"TextMEF network, weights {weights}, {tiles}, {options.device}; stacks: "
            f"{_strategy(name, options)} strategy"
        )
    if name == "mertens":
        import cv2

        return (
            f"Mertens et al. 2007 exposure fusion, OpenCV {cv2.__version__} MergeMertens "
            "with the paper's weights (contrast, saturation, well-exposedness all 1), "
            "single-threaded for bit-exact results, all frames"
        )
    if name == "enfuse":
        from textmef.baselines.enfuse import enfuse_version

        return f"enfuse ({enfuse_version() or 'not installed'}), default weights, all frames"
    if name == "mean":
        return "per-pixel mean of the exposures"
    raise MethodUnavailableError(None, f"unknown method {name!r}")
