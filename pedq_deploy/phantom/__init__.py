"""The simulated pediatric head: every test, training run and benchmark draws from it."""

from __future__ import annotations

from .crops import Crop, random_crop
from .head import DGM_LABELS
from .simulate import SOURCE_PROTOCOL, Subject, make_subject, supersample_factors, tilt_affine, write_bids, write_subject

__all__ = [
    "Crop",
    "random_crop",
    "DGM_LABELS",
    "SOURCE_PROTOCOL",
    "Subject",
    "make_subject",
    "supersample_factors",
    "tilt_affine",
    "write_bids",
    "write_subject",
]
