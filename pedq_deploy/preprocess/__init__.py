"""Preprocessing: phase scaling, brain masking, phase unwrapping, echo combination, background field removal."""

from __future__ import annotations

from .echoes import check_echo_times, combine_echoes
from .lbv import lbv
from .masking import classic_mask, close_mask, normalise_magnitude
from .phase import check_not_swapped, detect_and_scale_phase
from .unwrap import UNWRAP_METHODS, laplacian_unwrap, lsq_unwrap, quality_unwrap, unwrap_phase
from .vsharp import default_radii, vsharp

__all__ = [
    "check_echo_times",
    "combine_echoes",
    "classic_mask",
    "close_mask",
    "normalise_magnitude",
    "check_not_swapped",
    "detect_and_scale_phase",
    "UNWRAP_METHODS",
    "laplacian_unwrap",
    "lsq_unwrap",
    "quality_unwrap",
    "unwrap_phase",
    "default_radii",
    "lbv",
    "vsharp",
]
