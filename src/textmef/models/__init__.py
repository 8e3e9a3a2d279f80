"""Model definitions built from frozen configs."""

from textmef.models.fusionnet import CONFIGS, FusionNet, FusionNetConfig, set_scan_backend

__all__ = ["CONFIGS", "FusionNet", "FusionNetConfig", "set_scan_backend"]
