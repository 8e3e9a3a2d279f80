"""The one registry of fusion methods: the network and the classic baselines, by name.

Every method is built as ``method(frames) -> fused``: (1, 3, H, W) float tensors in [0, 1],
darkest first (an under/over pair or a whole exposure stack), in; one (1, 3, H, W) tensor
in [0, 1] out. The benchmark, the web app and the tests all take methods from here, so
they fuse, time and score the network and the baselines the same way.

The network fuses a stack with one of the strategies of :mod:`textmef.stack` (``textmef``
uses the default; ``textmef-progressive`` and ``textmef-extremes`` name them) through
:func:`textmef.api.fuse`; Mertens and enfuse take every frame natively; ``mean`` averages
them. This module imports nothing heavy, so the command line can list the names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from textmef.errors import InputError
from textmef.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, DEFAULT_WORK_SIZE

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_METHODS",
    "FrameFusion",
    "FusionMethod",
    "MethodOptions",
    "MethodUnavailableError",
    "build_method",
    "get_method",
    "list_methods",
    "method_description",
    "register_method",
    "unavailable_reason",
]

FrameFusion = Callable[[Sequence["torch.Tensor"]], "torch.Tensor"]
# What `textmef bench` runs when --methods is not given.
DEFAULT_METHODS = ("textmef", "mertens", "enfuse", "mean")


class MethodUnavailableError(InputError):
    """A method is unknown or cannot run on this machine (e.g. its binary is missing)."""


@dataclass(frozen=True)
class MethodOptions:
    """How to build the network methods (the baselines take no options).

    Attributes:
        weights: a ``.safetensors`` checkpoint; None uses the one shipped in the package.
        device: ``cpu`` or ``cuda``.
        tile: pixel budget (tile x tile) of a network tile, 0 = whole image
            (see :mod:`textmef.tiling`).
        overlap: tile overlap in pixels.
        strategy: how ``textmef`` fuses stacks of 3+ frames (None: the package default).
        work_size: None runs the network at full resolution (the method as published,
            what ``textmef bench`` measures unless told otherwise); N takes the guided path
            above N x N pixels, as ``textmef fuse`` and the web app do
            (see :func:`textmef.api.fuse`).
        model: an already loaded network to use instead of loading ``weights`` (a server
            that keeps one model for every request).
    """

    weights: str | os.PathLike[str] | None = None
    device: str = "cpu"
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    strategy: str | None = None
    work_size: int | None = None
    model: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FusionMethod:
    """A registered fusion method.

    Attributes:
        name: the registry key (``--methods``, the web page, report columns).
        summary: one line for people choosing a method.
        build: makes the :data:`FrameFusion` for given options (loads weights, etc.).
        describe: one line saying exactly what ran, for reports.
        unavailable: why the method cannot run here, or None when it can.
        uses_network: whether ``weights``, ``device`` and tiling apply.
        strategy: for network methods, the stack strategy it always uses (None: the one
            the options name, else the package default).
    """

    name: str
    summary: str
    build: Callable[[MethodOptions], FrameFusion]
    describe: Callable[[MethodOptions], str]
    unavailable: Callable[[], str | None] = lambda: None
    uses_network: bool = False
    strategy: str | None = None

    def stack_strategy(self, options: MethodOptions) -> str | None:
        """How this method fuses a stack: a strategy for the network, None for the others
        (they fuse every frame natively)."""
        return _strategy(self.strategy, options) if self.uses_network else None

    def frames_used(self, options: MethodOptions, count: int) -> list[int]:
        """Positions (darkest first) of the frames a stack of ``count`` contributes."""
        from textmef.stack import strategy_ranks

        strategy = self.stack_strategy(options)
        return strategy_ranks(strategy, count) if strategy else list(range(count))


_METHODS: dict[str, FusionMethod] = {}


def register_method(method: FusionMethod) -> FusionMethod:
    """Add ``method`` to the registry.

    Raises:
        ValueError: the name is taken.
    """
    if method.name in _METHODS:
        raise ValueError(f"fusion method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def list_methods() -> list[str]:
    """Registered method names, in registration order."""
    return list(_METHODS)


def get_method(name: str) -> FusionMethod:
    """The method called ``name``.

    Raises:
        MethodUnavailableError: no such method (the message lists the known names).
    """
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(_METHODS)
        raise MethodUnavailableError(None, f"unknown method {name!r}; known: {known}") from None


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot run here (unknown, or missing a program), or None when it can."""
    if name not in _METHODS:
        return f"unknown method {name!r}; known: {', '.join(_METHODS)}"
    return _METHODS[name].unavailable()


def build_method(name: str, options: MethodOptions | None = None) -> FrameFusion:
    """The fusion method called ``name``, ready to call on frames.

    Raises:
        MethodUnavailableError: unknown name, or the method cannot run on this machine.
        CheckpointError: the network's weights cannot be loaded.
    """
    method = get_method(name)
    reason = method.unavailable()
    if reason:
        raise MethodUnavailableError(None, f"method {name}: {reason}")
    return method.build(options or MethodOptions())


def method_description(name: str, options: MethodOptions | None = None) -> str:
    """One line saying exactly what ``name`` runs (checkpoint, binary version)."""
    return get_method(name).describe(options or MethodOptions())


# ---- the network ---------------------------------------------------------------------------
def _strategy(fixed: str | None, options: MethodOptions) -> str:
    from textmef.stack import DEFAULT_STRATEGY

    return fixed or options.strategy or DEFAULT_STRATEGY


def _network(fixed_strategy: str | None) -> Callable[[MethodOptions], FrameFusion]:
    def build(options: MethodOptions) -> FrameFusion:
        from textmef.api import load_model
        from textmef.stack import fuse_frames, network_pair_fusion

        model = (
            options.model
            if options.model is not None
            else load_model(options.weights, options.device)
        )
        pair = network_pair_fusion(
            model,
            tile=options.tile,
            overlap=options.overlap,
            work_size=options.work_size or DEFAULT_WORK_SIZE,
            full_res=options.work_size is None,
        )
        strategy = _strategy(fixed_strategy, options)
        return lambda frames: fuse_frames(frames, pair, strategy)

    return build


def _describe_network(fixed_strategy: str | None) -> Callable[[MethodOptions], str]:
    def describe(options: MethodOptions) -> str:
        from textmef.checkpoint import packaged_weights_path

        weights = options.weights or packaged_weights_path()
        tiles = (
            f"tiles {options.tile} px, overlap {options.overlap}" if options.tile else "whole image"
        )
        if options.work_size is not None:
            tiles += f"; guided path above {options.work_size} x {options.work_size} px"
        return (
            f"TextMEF network, weights {weights}, {tiles}, {options.device}; stacks: "
            f"{_strategy(fixed_strategy, options)} strategy"
        )

    return describe


# ---- the baselines -------------------------------------------------------------------------
def _numpy_frames(fusion_name: str) -> Callable[[MethodOptions], FrameFusion]:
    def build(options: MethodOptions) -> FrameFusion:
        from textmef import baselines, io

        fusion = getattr(baselines, fusion_name)
        return lambda frames: io.to_tensor(fusion([io.from_tensor(f) for f in frames]))

    return build


def _build_mean(options: MethodOptions) -> FrameFusion:
    import torch

    return lambda frames: torch.stack(list(frames)).clamp(0.0, 1.0).mean(dim=0)


def _describe_mertens(options: MethodOptions) -> str:
    import cv2

    return (
        f"Mertens et al. 2007 exposure fusion, OpenCV {cv2.__version__} MergeMertens "
        "with the paper's weights (contrast, saturation, well-exposedness all 1), "
        "single-threaded for bit-exact results, all frames"
    )


def _describe_enfuse(options: MethodOptions) -> str:
    from textmef.baselines.enfuse import enfuse_version

    return f"enfuse ({enfuse_version() or 'not installed'}), default weights, all frames"


def _enfuse_missing() -> str | None:
    from textmef.baselines.enfuse import enfuse_available

    if enfuse_available():
        return None
    return (
        "the enfuse binary is not installed (Debian/Ubuntu package 'enfuse' or "
        "'enblend-enfuse'; or set TEXTMEF_ENFUSE to its path)"
    )


for _name, _fixed, _summary in (
    ("textmef", None, "the TextMEF network"),
    ("textmef-extremes", "extremes", "network, darkest + brightest"),
    ("textmef-progressive", "progressive", "network, every frame in turn"),
):
    register_method(
        FusionMethod(
            name=_name,
            summary=_summary,
            build=_network(_fixed),
            describe=_describe_network(_fixed),
            uses_network=True,
            strategy=_fixed,
        )
    )
register_method(
    FusionMethod(
        name="mertens",
        summary="Mertens exposure fusion",
        build=_numpy_frames("mertens"),
        describe=_describe_mertens,
    )
)
register_method(
    FusionMethod(
        name="enfuse",
        summary="enfuse (enblend-enfuse)",
        build=_numpy_frames("enfuse_frames"),
        describe=_describe_enfuse,
        unavailable=_enfuse_missing,
    )
)
register_method(
    FusionMethod(
        name="mean",
        summary="mean of the frames",
        build=_build_mean,
        describe=lambda options: "per-pixel mean of the exposures",
    )
)
