"""Patient geometry shared by the DICOM and MRD readers: LPS <-> RAS and the spacing of a slice stack."""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["LPS_TO_RAS", "lps_to_ras", "ras_to_lps", "slice_spacing"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # its own inverse: flips x and y


def lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """A voxel -> LPS affine as the voxel -> RAS affine NIfTI uses (and back: the flip is its own inverse)."""
    flip = np.eye(4)
    flip[:3, :3] = LPS_TO_RAS
    return flip @ affine_lps


ras_to_lps = lps_to_ras  # the same flip


def slice_spacing(offsets: np.ndarray, default: float, where: str) -> float:
    """Spacing (mm) of slices at sorted ``offsets`` along their normal; ``default`` for one slice.

    Refuses duplicate or unevenly spaced slices (1% tolerance). Positions often travel as float32,
    so the spacing is rounded to 0.1 um: 4 mm stays 4 mm.
    """
    if len(offsets) < 2:
        return float(default)
    gaps = np.diff(np.asarray(offsets, np.float64))
    if np.any(gaps <= 1e-3) or np.ptp(gaps) > 1e-2 * gaps.mean():
        raise InputError(f"{where}: slices are not evenly spaced along their normal (missing or duplicate slices?)")
    return round(float(gaps.mean()), 4)
