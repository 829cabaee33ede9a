from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..physics import check_direction, check_voxel_size


def check_inversion_input(local_field, mask, voxel_size: Sequence[float], direction: Sequence[float]):
    f = np.asarray(local_field)
    m = np.asarray(mask)
    if f.ndim != 3 or f.shape != m.shape:
        raise InputError(f"local field {f.shape} and mask {m.shape} must be 3D of one shape")
    if not np.all(np.isfinite(f)):
        raise InputError("local field contains NaN or infinite values")
    mb = m > 0
    if not mb.any():
        raise InputError("brain mask is empty")
    return np.ascontiguousarray(f, np.float32), mb, check_voxel_size(voxel_size), check_direction(direction)


def demean(chi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reference chi to the mean over the mask (susceptibility is relative), zero outside."""
    out = np.where(mask, chi - chi[mask].mean(), 0.0).astype(np.float32)
    return out
