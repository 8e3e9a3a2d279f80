"""Input limits shared by every entry point (no heavy imports: the CLI reads the defaults)."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PIXELS", "MIN_SIDE"]

# Largest image read unless a caller says otherwise (--max-pixels): 100 MP covers every
# camera sensor sold today; a float32 copy of it is 1.2 GB, so a pair stays within reach
# of a 16 GB machine. The network itself works tile by tile whatever the size.
DEFAULT_MAX_PIXELS = 100_000_000
# Smallest side accepted: below it the network's 3x3 convolutions and pooling see nothing.
MIN_SIDE = 4
