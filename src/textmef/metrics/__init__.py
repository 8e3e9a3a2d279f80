"""Image-quality metrics: MEF-SSIM (MEFB definition), reference PSNR and SSIM.

Each metric has a functional form and an ``nn.Module`` wrapper. Images are float tensors,
(B, C, H, W) or (C, H, W); see each function for its value range and reduction.
"""

from textmef.metrics.mef_ssim import MEFSSIM, mef_ssim
from textmef.metrics.psnr import PSNR, psnr
from textmef.metrics.ssim import SSIM, ssim

__all__ = ["MEFSSIM", "PSNR", "SSIM", "mef_ssim", "psnr", "ssim"]
