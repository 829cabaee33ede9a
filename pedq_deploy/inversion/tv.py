"""Total-variation regularised dipole inversion by ADMM with closed-form FFT updates.

Reference: B. Bilgic et al., "Fast image reconstruction with L2-regularization", J. Magn. Reson.
Imaging 40(1):181-191, 2014 (the closed-form ADMM for TV-QSM is in its supplement and in
the authors' public code); S. Boyd et al., "Distributed optimization and statistical learning via
ADMM", 2011.

Problem: ``min_chi 1/2 || m (D chi - f) ||^2 + lam || grad chi ||_1`` with the data term taken
over the whole padded box (field zero outside the mask), which makes the chi update diagonal in
k-space. Each iteration costs one real FFT pair plus fused Numba passes.
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

__all__ = ["tv_admm"]


def _gradient_eigs(shape, voxel_size) -> np.ndarray:
    """Sum over axes of |E_a(k)|^2 for forward differences divided by the voxel size."""
    total = np.zeros((shape[0], shape[1], shape[2] // 2 + 1), np.float32)
    for axis, (n, h) in enumerate(zip(shape, voxel_size)):
        k = np.arange(n // 2 + 1) if axis == 2 else np.fft.fftfreq(n) * n
        e2 = (2.0 - 2.0 * np.cos(2.0 * np.pi * k / n)) / (h * h)
        s = [1, 1, 1]
        s[axis] = e2.size
        total = total + e2.reshape(s).astype(np.float32)
    return total


@numba.njit(parallel=True, fastmath=True, cache=True)
def _shrink_update(chi, z, u, inv_h, kappa, rhs):  # pragma: no cover - compiled
    """z = shrink(grad chi + u, kappa); u += grad chi - z; rhs = div^T-term grad^T(z - u)."""
    n0, n1, n2 = chi.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                c = chi[i, j, k]
                g0 = (chi[(i + 1) % n0, j, k] - c) * inv_h[0]
                g1 = (chi[i, (j + 1) % n1, k] - c) * inv_h[1]
                g2 = (chi[i, j, (k + 1) % n2] - c) * inv_h[2]
                for a in range(3):
                    g = g0 if a == 0 else (g1 if a == 1 else g2)
                    v = g + u[a, i, j, k]
                    if v > kappa:
                        zz = v - kappa
                    elif v < -kappa:
                        zz = v + kappa
                    else:
                        zz = 0.0
                    z[a, i, j, k] = zz
                    u[a, i, j, k] = v - zz
    # grad^T (z - u): adjoint of the periodic forward difference
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                s = 0.0
                w0 = z[0, i, j, k] - u[0, i, j, k]
                wm0 = z[0, (i - 1) % n0, j, k] - u[0, (i - 1) % n0, j, k]
                s += (wm0 - w0) * inv_h[0]
                w1 = z[1, i, j, k] - u[1, i, j, k]
                wm1 = z[1, i, (j - 1) % n1, k] - u[1, i, (j - 1) % n1, k]
                s += (wm1 - w1) * inv_h[1]
                w2 = z[2, i, j, k] - u[2, i, j, k]
                wm2 = z[2, i, j, (k - 1) % n2] - u[2, i, j, (k - 1) % n2]
                s += (wm2 - w2) * inv_h[2]
                rhs[i, j, k] = s


@numba.njit(parallel=True, fastmath=True, cache=True)
def _chi_update(spec, dtf, inv_denom, rho):  # pragma: no cover - compiled
    """spec = (rho * spec + D^T F f) / (|D|^2 + rho |E|^2), in one pass."""
    n0, n1, n2 = spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                spec[i, j, k] = (rho * spec[i, j, k] + dtf[i, j, k]) * inv_denom[i, j, k]


def tv_admm(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    lam: float = 3e-4,
    rho: float | None = None,
    iterations: int = 60,
) -> np.ndarray:
    """Susceptibility (ppm) from the local field (ppm) by TV-regularised ADMM.

    Parameters
    ----------
    lam : float
        TV weight (the field is in ppm, gradients in ppm/mm).
    rho : float, optional
        ADMM penalty; default ``100 * lam``.
    iterations : int
        ADMM iterations (each one real FFT pair).

    Returns
    -------
    float32 chi, referenced to its mean over the mask, zero outside.
    """
    f, m, v, b = check_inversion_input(local_field, mask, voxel_size, direction)
    if not lam > 0 or iterations < 1:
        raise InputError(f"TV needs lam > 0 and iterations >= 1, got lam={lam}, iterations={iterations}")
    rho = 100.0 * lam if rho is None else float(rho)
    box = crop_to_mask(m)
    shape = box.shape
    w = fft_workers()
    d = dipole_kernel_rfft(shape, v, b)
    e2 = _gradient_eigs(shape, v)
    denom = (d * d + rho * e2).astype(np.float32)
    denom[0, 0, 0] = 1.0  # the mean is undetermined; it is fixed by demeaning over the mask
    inv_denom = (1.0 / denom).astype(np.float32)
    del denom, e2
    dtf = (scipy.fft.rfftn(box.embed(np.where(m, f, 0.0)), workers=w) * d).astype(np.complex64)
    chi = np.zeros(shape, np.float32)
    z = np.zeros((3,) + shape, np.float32)
    u = np.zeros((3,) + shape, np.float32)
    rhs = np.zeros(shape, np.float32)
    inv_h = (1.0 / v).astype(np.float32)
    kappa = np.float32(lam / rho)
    for _ in range(iterations):
        _shrink_update(chi, z, u, inv_h, kappa, rhs)
        spec = scipy.fft.rfftn(rhs, workers=w)
        _chi_update(spec, dtf, inv_denom, np.float32(rho))
        chi = scipy.fft.irfftn(spec, s=shape, workers=w, overwrite_x=True).astype(np.float32, copy=False)
    return demean(box.extract(chi), m)
