"""Classic fusion baselines to compare the network against."""

from textmef.baselines.mertens import mertens

__all__ = ["mertens"]
