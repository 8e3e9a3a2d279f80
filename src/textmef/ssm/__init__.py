"""Selective state-space scan: sequential reference and fast backends."""

from textmef.ssm.reference import selective_scan_reference
from textmef.ssm.scan import BACKENDS, resolve_backend, selective_scan, selective_scan_torch

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
]
