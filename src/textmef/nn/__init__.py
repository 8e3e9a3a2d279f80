"""Neural-network building blocks (Mamba mixer, convolutional blocks)."""

from textmef.nn.mamba import Mamba

__all__ = ["Mamba"]
