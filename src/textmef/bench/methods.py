"""Fusion methods by name, all with the network's call signature ``(under, over) -> fused``.

Every method is an ``nn.Module`` taking two (B, 3, H, W) float tensors in [0, 1] and
returning the fused (B, 3, H, W) tensor in [0, 1], so the benchmark fuses, times and scores
the network and the classic baselines the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from textmef.errors import InputError
from textmef.inference import DEFAULT_OVERLAP, DEFAULT_TILE, fuse_tensors

__all__ = ["METHOD_NAMES", "MethodOptions", "MethodUnavailableError", "TiledFusion", "build_method",
           "method_description", "unavailable_reason"]

METHOD_NAMES = ("textmef", "mertens", "enfuse", "mean")


class MethodUnavailableError(InputError):
    """A method cannot run on this machine (e.g. its binary is not installed)."""


class TiledFusion(nn.Module):
    """The fusion network run tile by tile (bounded memory at any size), clamped to [0, 1].

    Args:
        model: a network with ``forward(under, over)``.
        tile: tile side in pixels; None or 0 fuses the whole image at once.
        overlap: pixels shared by neighbouring tiles.
    """

    def __init__(self, model: nn.Module, tile: int | None = DEFAULT_TILE,
                 overlap: int = DEFAULT_OVERLAP) -> None:
        super().__init__()
        self.model = model
        self.tile = tile
        self.overlap = overlap

    @torch.no_grad()
    def forward(self, under: torch.Tensor, over: torch.Tensor) -> torch.Tensor:
        """Fuse on the model's device; the result comes back on the inputs' device."""
        device = next(self.model.parameters()).device
        fused = fuse_tensors(self.model, under.to(device), over.to(device),
                             tile=self.tile, overlap=self.overlap)
        return fused.clamp_(0.0, 1.0).to(under.device)


@dataclass(frozen=True)
class MethodOptions:
    """How to build the network method (the baselines take no options).

    Attributes:
        weights: a ``.safetensors`` checkpoint; None uses the one shipped in the package.
        device: ``cpu`` or ``cuda``.
        tile: tile side for the network (0 or None: whole image).
        overlap: tile overlap in pixels.
    """

    weights: str | os.PathLike | None = None
    device: str = "cpu"
    tile: int | None = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run here, or None when it can."""
    if name not in METHOD_NAMES:
        return f"unknown method {name!r}; known: {', '.join(METHOD_NAMES)}"
    if name == "enfuse":
        from textmef.baselines.enfuse import enfuse_available

        if not enfuse_available():
            return ("the enfuse binary is not installed (Debian/Ubuntu package 'enfuse' or "
                    "'enblend-enfuse'; or set TEXTMEF_ENFUSE to its path)")
    return None


def build_method(name: str, options: MethodOptions | None = None) -> nn.Module:
    """The fusion method called ``name`` (one of :data:`METHOD_NAMES`), in eval mode.

    Raises:
        MethodUnavailableError: unknown name, or the method cannot run on this machine.
        CheckpointError: the network's weights cannot be loaded.
    """
    options = options or MethodOptions()
    reason = unavailable_reason(name)
    if reason:
        raise MethodUnavailableError(None, f"method {name}: {reason}")
    if name == "textmef":
        from textmef.api import load_model

        model = load_model(options.weights, options.device)
        return TiledFusion(model, options.tile, options.overlap).eval()
    from textmef.baselines import BASELINES

    return BASELINES[name]().eval()


def method_description(name: str, options: MethodOptions | None = None) -> str:
    """One line saying exactly what ran, for reports (checkpoint, binary version)."""
    options = options or MethodOptions()
    if name == "textmef":
        from textmef.checkpoint import packaged_weights_path

        weights = options.weights or packaged_weights_path()
        tiles = f"tiles {options.tile} px, overlap {options.overlap}" if options.tile else \
            "whole image"
        return f"TextMEF network, weights {weights}, {tiles}, {options.device}"
    if name == "mertens":
        import cv2

        return (f"Mertens et al. 2007 exposure fusion, OpenCV {cv2.__version__} MergeMertens "
                "with the paper's weights (contrast, saturation, well-exposedness all 1), "
                "single-threaded for bit-exact results")
    if name == "enfuse":
        from textmef.baselines.enfuse import enfuse_version

        return f"enfuse ({enfuse_version() or 'not installed'}), default weights"
    if name == "mean":
        return "per-pixel mean of the two exposures"
    raise MethodUnavailableError(None, f"unknown method {name!r}")
