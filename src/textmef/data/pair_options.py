"""Options of ``textmef make-pairs`` (no heavy imports: the command line reads the defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from textmef.errors import InputError
from textmef.limits import DEFAULT_MAX_PIXELS

__all__ = ["MANIFEST_NAME", "PAIR_MARK", "PICK_MODES", "REFERENCE_METHODS", "PairOptions"]

PICK_MODES = ("extremes", "ev-gap", "all-pairs")
REFERENCE_METHODS = ("mertens", "mertens-paper", "hdr", "best")
MANIFEST_NAME = "manifest.json"
# Joins a stack's name and a pair's frame stems in all-pairs output names
# (``STACK@UNDER-OVER``); the part before it is the sequence the split keeps together.
PAIR_MARK = "@"


@dataclass(frozen=True)
class PairOptions:
    """How ``make_pairs`` turns stacks into triplets.

    Attributes:
        pick: ``"extremes"`` (darkest and brightest frame), ``"ev-gap"`` (one pair about
            ``ev_gap`` stops apart) or ``"all-pairs"`` (every pair at least ``min_gap``
            stops apart, each a triplet named ``STACK@UNDER-OVER``).
        ev_gap: for ``pick="ev-gap"``, the wanted exposure gap between the pair in stops.
        min_gap: for ``pick="all-pairs"``, the smallest exposure gap of a pair in stops.
        reference: ``"mertens"`` (OpenCV's default weights), ``"mertens-paper"`` (the
            paper's 1/1/1 weights), ``"hdr"`` or ``"best"`` (all three, keeping the
            highest MEF-SSIM against the whole stack).
        max_side: downsize (INTER_AREA) so that no side exceeds this, before anything
            else; None keeps the size.
        skip_existing: keep a stack's outputs and manifest entries when a previous run
            with the same options wrote them (every entry and all its files exist).
        max_pixels: the most pixels per image, checked from the header before decoding
            (None: no limit); a stack with a larger frame is skipped with the reason.
        align: register every frame to the middle exposure (:func:`textmef.align.
            align_frames`) and crop all to the common area before anything else.
    """

    pick: str = "extremes"
    ev_gap: float = 2.0
    min_gap: float = 2.0
    reference: str = "best"
    max_side: int | None = None
    skip_existing: bool = False
    align: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.pick not in PICK_MODES:
            raise InputError(None, f"pick must be one of {PICK_MODES}, not {self.pick!r}")
        if self.reference not in REFERENCE_METHODS:
            raise InputError(
                None, f"reference must be one of {REFERENCE_METHODS}, not {self.reference!r}"
            )
        if not (math.isfinite(self.ev_gap) and self.ev_gap > 0):
            raise InputError(
                None, f"the EV gap must be a positive number of stops, not {self.ev_gap}"
            )
        if not (math.isfinite(self.min_gap) and self.min_gap > 0):
            raise InputError(
                None, f"the minimum gap must be a positive number of stops, not {self.min_gap}"
            )
        if self.max_side is not None:
            from textmef.io import MIN_SIDE

            if self.max_side < MIN_SIDE:
                raise InputError(
                    None, f"max side must be at least {MIN_SIDE} pixels, not {self.max_side}"
                )
