"""Benchmarking: every metric per image, the eval/bench runners and the report writers.

Methods come from the one registry, :mod:`textmef.methods`. Submodules are imported on
first use (``textmef.bench.run_bench`` works), so the command line can read the settings
in :mod:`textmef.bench.config` without loading PyTorch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "METRICS",
    "BenchConfig",
    "EvalResult",
    "MetricSpec",
    "run_bench",
    "run_eval",
    "score_image",
]

_HOMES = {
    "BenchConfig": "textmef.bench.config",
    "EvalResult": "textmef.bench.runner",
    "run_bench": "textmef.bench.runner",
    "run_eval": "textmef.bench.runner",
    "METRICS": "textmef.bench.scoring",
    "MetricSpec": "textmef.bench.scoring",
    "score_image": "textmef.bench.scoring",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'textmef.bench' has no attribute {name!r}")
