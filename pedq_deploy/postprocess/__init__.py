"""Postprocessing: checks of a reconstruction (data consistency, QC flags)."""
from __future__ import annotations

from .qc import QC_THRESHOLDS, consistency, estimate_noise_sigma

__all__ = ["QC_THRESHOLDS", "consistency", "estimate_noise_sigma"]
