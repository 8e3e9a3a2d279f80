"""Every metric of the benchmark, computed for one fused image in one call.

Three families, as MEF papers report them:

* against the reference image (when the dataset has one): PSNR, SSIM (scikit-image's
  definitions on RGB in [0, 1]) and TMQI (the reference plays the HDR image's part);
* against the two sources, MEFB's definitions: MEF-SSIM, QAB/F and MEFB's fusion PSNR;
* no reference, MEFB's definitions: EN, SD, SF, AG, EI.

MEFB only ever scored 8-bit files, so the MEFB metrics see every image rounded to 8-bit
levels (``quantize=True``), whatever bit depth the files have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from textmef import metrics as M

__all__ = ["METRICS", "MetricSpec", "metric_names", "score_image"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the reports show it.

    Attributes:
        name: column name in CSV and Markdown.
        needs: ``"reference"``, ``"sources"`` or ``"none"`` (what besides the fused image).
        higher_is_better: which way the best value lies (all MEFB metrics: higher).
        digits: decimals shown in Markdown tables.
        description: one line for the report's legend.
    """

    name: str
    needs: str
    higher_is_better: bool
    digits: int
    description: str
    compute: Callable[..., torch.Tensor]


def _psnr(under, over, fused, gt, stack):
    return M.psnr(fused, gt, reduction="none")


def _ssim(under, over, fused, gt, stack):
    return M.ssim(fused, gt, reduction="none")


def _tmqi(under, over, fused, gt, stack):
    return M.tmqi(gt, fused, reduction="none")


def _mef_ssim(under, over, fused, gt, stack):
    sources = stack if stack is not None else torch.cat([under, over])
    return M.mef_ssim(sources, fused).reshape(1)


def _qabf(under, over, fused, gt, stack):
    return M.qabf(under, over, fused, reduction="none")


def _psnr_mefb(under, over, fused, gt, stack):
    return M.psnr_mefb(under, over, fused, reduction="none")


def _no_ref(function):
    return lambda under, over, fused, gt, stack: function(fused, reduction="none")


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("PSNR", "reference", True, 2, "PSNR (dB) against the reference, RGB", _psnr),
    MetricSpec("SSIM", "reference", True, 4, "SSIM against the reference (scikit-image)", _ssim),
    MetricSpec(
        "TMQI",
        "reference",
        True,
        4,
        "TMQI (Yeganeh & Wang 2013), the reference as the HDR image",
        _tmqi,
    ),
    MetricSpec(
        "MEF-SSIM",
        "sources",
        True,
        4,
        "MEF-SSIM (Ma et al. 2015), 3 scales, against both sources (MEFB)",
        _mef_ssim,
    ),
    MetricSpec(
        "QABF", "sources", True, 4, "QAB/F gradient transfer (Xydeas & Petrovic, MEFB)", _qabf
    ),
    MetricSpec(
        "PSNR_MEFB",
        "sources",
        True,
        2,
        "MEFB's fusion PSNR against both sources (sqrt(SSE)/N, size-dependent)",
        _psnr_mefb,
    ),
    MetricSpec("EN", "none", True, 3, "entropy in bits (MEFB)", _no_ref(M.entropy)),
    MetricSpec(
        "SD", "none", True, 2, "standard deviation, 0..255 (MEFB)", _no_ref(M.standard_deviation)
    ),
    MetricSpec("SF", "none", True, 2, "spatial frequency (MEFB)", _no_ref(M.spatial_frequency)),
    MetricSpec("AG", "none", True, 3, "average gradient (MEFB)", _no_ref(M.average_gradient)),
    MetricSpec("EI", "none", True, 2, "edge intensity, Sobel (MEFB)", _no_ref(M.edge_intensity)),
)

_BY_NAME = {spec.name: spec for spec in METRICS}


def metric_names(with_reference: bool = True) -> list[str]:
    """Names of the metrics that can be computed with or without a reference image."""
    return [s.name for s in METRICS if with_reference or s.needs != "reference"]


def resolve_metrics(names: Sequence[str] | None, with_reference: bool) -> list[MetricSpec]:
    """Specs for ``names`` (None: all computable), refusing unknown names.

    Raises:
        ValueError: an unknown name, or a reference metric asked for without references.
    """
    if names is None:
        return [s for s in METRICS if with_reference or s.needs != "reference"]
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(_BY_NAME)}")
    specs = [_BY_NAME[n] for n in names]
    missing = [s.name for s in specs if s.needs == "reference" and not with_reference]
    if missing:
        raise ValueError(f"{', '.join(missing)} need reference images (--gt)")
    return specs


@torch.no_grad()
def score_image(
    under: torch.Tensor,
    over: torch.Tensor,
    fused: torch.Tensor,
    gt: torch.Tensor | None = None,
    metrics: Sequence[MetricSpec] | None = None,
    stack: torch.Tensor | None = None,
) -> dict[str, float]:
    """All requested metrics of one fused image, as plain floats.

    Args:
        under: the under-exposed source, (1, 3, H, W) float in [0, 1].
        over: the over-exposed source, same shape.
        fused: the fused image, same shape.
        gt: the reference, same shape, or None (reference metrics are then skipped).
        metrics: which metrics (default: all that apply).
        stack: all source exposures, (K, 3, H, W), when there are more than two: MEF-SSIM
            is then computed against the whole stack (the two-source metrics QAB/F and
            PSNR_MEFB keep ``under`` and ``over``, the darkest and brightest frames).

    Returns:
        ``{metric name: value}`` in the order of ``metrics``.
    """
    specs = metrics if metrics is not None else resolve_metrics(None, gt is not None)
    scores = {}
    for spec in specs:
        if spec.needs == "reference" and gt is None:
            continue
        scores[spec.name] = float(spec.compute(under, over, fused, gt, stack)[0])
    return scores
