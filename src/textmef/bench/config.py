"""Settings of a ``textmef bench`` run (no heavy imports: the command line reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textmef.limits import DEFAULT_MAX_PIXELS
from textmef.methods import DEFAULT_METHODS, MethodOptions

__all__ = ["SPLITS", "BenchConfig"]

SPLITS = ("all", "train", "val")


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one ``textmef bench`` run.

    Attributes:
        data: a triplet folder (``under/ over/`` and optionally ``gt/``, e.g. made by
            ``textmef make-pairs``) or SICE's ``trainA/ trainB/ trainC/``.
        out: the report folder (created; reused when it exists).
        methods: method names, in report order.
        stacks: ``data`` is a folder of exposure stacks (as ``textmef make-pairs`` takes):
            every method fuses all frames of a stack, darkest first.
        references: with ``stacks``, a folder of references named like make-pairs names
            the stacks (e.g. make-pairs' ``gt/``); optional.
        split: ``all`` scenes, or the ``train`` / ``val`` part of the fixed split by name
            hash that training uses.
        val_fraction: the split's held-out fraction (training's ``data.val_fraction``).
        metrics: metric names, or None for every metric the data allows.
        limit: only the first N scenes (by name) after splitting; None for all.
        method_options: how to build the network method.
        max_pixels: the most pixels per input image, checked from every file's header
            before anything is fused (None: no limit).
        grid_height: thumbnail height of the per-scene grids.
    """

    data: Path
    out: Path
    methods: tuple[str, ...] = DEFAULT_METHODS
    stacks: bool = False
    references: Path | None = None
    split: str = "all"
    val_fraction: float = 0.1
    metrics: tuple[str, ...] | None = None
    limit: int | None = None
    method_options: MethodOptions = field(default_factory=MethodOptions)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    grid_height: int = 240
