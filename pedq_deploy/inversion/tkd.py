"""Truncated k-space division (Shmueli et al. 2009).

Reference: K. Shmueli et al., "Magnetic susceptibility mapping of brain tissue in vivo using MRI
phase data", Magn. Reson. Med. 62(6):1510-1522, 2009.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import scipy.fft

from ..errors import InputError
from ..physics import dipole_kernel_rfft, fft_workers
from ._common import check_inversion_input, demean
from ._crop import crop_to_mask

__all__ = ["tkd"]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _truncated_inverse(d, threshold):  # pragma: no cover - compiled
    """In place: 1/D where |D| >= threshold, sign(D)/threshold below it, 0 at k = 0."""
    n0, n1, n2 = d.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                v = d[i, j, k]
                if abs(v) >= threshold:
                    d[i, j, k] = 1.0 / v
                elif v > 0:
                    d[i, j, k] = 1.0 / threshold
                elif v < 0:
                    d[i, j, k] = -1.0 / threshold
                else:
                    d[i, j, k] = 0.0
    d[0, 0, 0] = 0.0


def tkd(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    threshold: float = 0.19,
) -> np.ndarray:
    """Susceptibility (ppm) from the local field (ppm) by TKD.

    ``1/D`` is replaced by ``sign(D)/threshold`` where ``|D| < threshold``. The result is
    referenced to its mean over the mask and is zero outside it.
    """
    f, m, v, b = check_inversion_input(local_field, mask, voxel_size, direction)
    if not 0 < threshold < 2.0 / 3.0:
        raise InputError(f"TKD threshold must lie in (0, 2/3), got {threshold}")
    box = crop_to_mask(m)
    inv = dipole_kernel_rfft(box.shape, v, b)
    _truncated_inverse(inv, np.float32(threshold))
    w = fft_workers()
    spec = scipy.fft.rfftn(box.embed(np.where(m, f, 0.0)), workers=w)
    spec *= inv
    chi = box.extract(scipy.fft.irfftn(spec, s=box.shape, workers=w))
    return demean(chi, m)
