"""Fused results held by ``textmef serve`` until downloaded or expired, within a byte budget."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FusedResult", "ResultStore"]


@dataclass(frozen=True, eq=False)
class FusedResult:
    """One fusion as the server keeps it: the JSON answer and the encoded images.

    Attributes:
        meta: the JSON the fuse request answered.
        png: the download, a PNG at the inputs' bit depth.
        preview: an 8-bit JPEG of the result for the page.
        input_previews: 8-bit JPEGs of the inputs, in upload order.
    """

    meta: dict[str, Any]
    png: bytes
    preview: bytes
    input_previews: tuple[bytes, ...]

    @property
    def nbytes(self) -> int:
        """The bytes of its encoded images, what :class:`ResultStore` budgets."""
        return len(self.png) + len(self.preview) + sum(len(p) for p in self.input_previews)


@dataclass
class _Held:
    result: FusedResult
    made: float  # ResultStore's clock when it was put
    downloaded: bool = False


class ResultStore:
    """Results kept until they expire or their bytes are needed; thread-safe.

    The rule: a result expires ``ttl_s`` seconds after it was put, downloaded or not (a
    download does not remove it: it may be downloaded again). When a new result would
    take the total of their encoded images (:attr:`FusedResult.nbytes`) over
    ``max_bytes``, older results make room: first those whose PNG has been downloaded,
    oldest first, then those not downloaded yet, oldest first. So a result nobody has
    fetched yet goes only when the byte budget forces it, and then the oldest such one
    goes first. A single result larger than the whole budget is still kept (alone), so
    that its user can download it.

    Args:
        max_bytes: the most bytes of results held together.
        ttl_s: seconds a result is kept at most.
        clock: seconds, monotonic (tests pass a fake one).

    Raises:
        ValueError: a limit is not positive.
    """

    def __init__(
        self, max_bytes: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_bytes < 1 or not ttl_s > 0:
            raise ValueError(f"max_bytes and ttl_s must be positive, got {max_bytes}, {ttl_s}")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, _Held] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()  # held for dictionary updates only, never for I/O

    def put(self, key: str, result: FusedResult) -> None:
        """Keep ``result`` under ``key``, making room by the rule above."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            self._drop(key)
            while self._items and self._bytes + result.nbytes > self.max_bytes:
                victim = next((k for k, h in self._items.items() if h.downloaded), None)
                self._drop(victim if victim is not None else next(iter(self._items)))
            self._items[key] = _Held(result, now)
            self._bytes += result.nbytes

    def get(self, key: str) -> FusedResult | None:
        """The result under ``key``, or None if unknown, expired or evicted."""
        with self._lock:
            self._expire(self._clock())
            held = self._items.get(key)
            return held.result if held is not None else None

    def mark_downloaded(self, key: str) -> None:
        """Note that the PNG under ``key`` was downloaded: it may make room first."""
        with self._lock:
            held = self._items.get(key)
            if held is not None:
                held.downloaded = True

    def stats(self) -> tuple[int, int]:
        """How many results are held, and their bytes."""
        with self._lock:
            self._expire(self._clock())
            return len(self._items), self._bytes

    def __len__(self) -> int:
        return self.stats()[0]

    def _expire(self, now: float) -> None:
        while self._items:
            key, held = next(iter(self._items.items()))
            if now - held.made < self.ttl_s:
                return
            self._drop(key)

    def _drop(self, key: str) -> None:
        held = self._items.pop(key, None)
        if held is not None:
            self._bytes -= held.result.nbytes
