"""Postprocessing: checks of a reconstruction (data consistency, QC flags)."""

from __future__ import annotations

from .qc import QC_THRESHOLDS, consistency, estimate_noise_sigma
from .segqc import SEG_QC_THRESHOLDS, segmentation_checks

__all__ = ["QC_THRESHOLDS", "SEG_QC_THRESHOLDS", "consistency", "estimate_noise_sigma", "segmentation_checks"]
