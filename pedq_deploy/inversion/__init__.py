"""Conventional dipole inversions: the baselines the networks must beat."""

from __future__ import annotations

from ._crop import crop_to_mask
from .tkd import tkd
from .tv import structure_edge_weight, tv_admm

__all__ = ["tkd", "tv_admm", "structure_edge_weight", "crop_to_mask"]
