"""Image-quality metrics of multi-exposure fusion, one small module each.

* against a reference image: :func:`psnr`, :func:`ssim` (scikit-image's definitions),
  :func:`tmqi` (Yeganeh & Wang 2013);
* against the sources, MEFB's definitions: :func:`mef_ssim`, :func:`qabf`,
  :func:`psnr_mefb` (MEFB's "fusion PSNR", not the standard one);
* no reference, MEFB's definitions: :func:`entropy` (EN), :func:`standard_deviation` (SD),
  :func:`spatial_frequency` (SF), :func:`average_gradient` (AG), :func:`edge_intensity` (EI).

Each metric has a functional form and an ``nn.Module`` wrapper. Images are float tensors in
[0, 1], (B, C, H, W) or (C, H, W); the MEFB metrics map them to MEFB's 0..255 scale, rounded
to 8-bit levels by default (``quantize=True``). See each function for shapes and reductions.
"""

from textmef.metrics.average_gradient import AverageGradient, average_gradient
from textmef.metrics.edge_intensity import EdgeIntensity, edge_intensity
from textmef.metrics.entropy import Entropy, entropy
from textmef.metrics.mef_ssim import MEFSSIM, mef_ssim
from textmef.metrics.psnr import PSNR, psnr
from textmef.metrics.psnr_mefb import PSNRMEFB, psnr_mefb
from textmef.metrics.qabf import QABF, qabf
from textmef.metrics.spatial_frequency import SpatialFrequency, spatial_frequency
from textmef.metrics.ssim import SSIM, ssim
from textmef.metrics.std import StandardDeviation, standard_deviation
from textmef.metrics.tmqi import TMQI, tmqi

__all__ = [
    "MEFSSIM",
    "PSNR",
    "PSNRMEFB",
    "QABF",
    "SSIM",
    "TMQI",
    "AverageGradient",
    "EdgeIntensity",
    "Entropy",
    "SpatialFrequency",
    "StandardDeviation",
    "average_gradient",
    "edge_intensity",
    "entropy",
    "mef_ssim",
    "psnr",
    "psnr_mefb",
    "qabf",
    "spatial_frequency",
    "ssim",
    "standard_deviation",
    "tmqi",
]
