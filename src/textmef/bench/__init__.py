"""Benchmarking: methods by name, every metric per image, and the eval/bench report writers."""

from textmef.bench.methods import METHOD_NAMES, MethodOptions, TiledFusion, build_method
from textmef.bench.runner import BenchConfig, EvalResult, run_bench, run_eval
from textmef.bench.scoring import METRICS, MetricSpec, score_image

__all__ = [
    "METHOD_NAMES",
    "METRICS",
    "BenchConfig",
    "EvalResult",
    "MethodOptions",
    "MetricSpec",
    "TiledFusion",
    "build_method",
    "run_bench",
    "run_eval",
    "score_image",
]
