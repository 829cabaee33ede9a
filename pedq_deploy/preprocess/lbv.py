"""LBV background field removal: the Laplacian boundary value method (Zhou et al. 2014).

Reference
---------
D. Zhou, T. Liu, P. Spincemaille, Y. Wang, "Background field removal by solving the Laplacian
boundary value problem", NMR Biomed. 27(3):312-319, 2014.

The background field has no sources inside the brain, so it is harmonic there: it solves
Laplace's equation with its own values on the brain's boundary. LBV takes the measured total
field's values on the mask's boundary as those values, solves for the harmonic field inside
(conjugate gradients on the 7-point Laplacian with the grid's own voxel sizes), and subtracts it.
Only the boundary layer is lost, where V-SHARP loses its smallest sphere's radius: with 2 mm
slices that is the difference between values in about four fifths of the brain and nearly all of
it. The price is near the boundary, where the local field is taken as zero and comes out damped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import scipy.ndimage as ndi

from ..errors import InputError
from ..physics import check_voxel_size

__all__ = ["lbv"]


@numba.njit(parallel=True, cache=True)
def _apply(x, inside, w, out):  # pragma: no cover - compiled
    """out = -Laplacian(x) on the voxels ``inside`` (x is zero outside them), 0 elsewhere."""
    nx, ny, nz = x.shape
    c = 2.0 * (w[0] + w[1] + w[2])
    for i in numba.prange(nx):
        for j in range(ny):
            for k in range(nz):
                if not inside[i, j, k]:
                    out[i, j, k] = 0.0
                    continue
                s = c * x[i, j, k]
                if i > 0:
                    s -= w[0] * x[i - 1, j, k]
                if i < nx - 1:
                    s -= w[0] * x[i + 1, j, k]
                if j > 0:
                    s -= w[1] * x[i, j - 1, k]
                if j < ny - 1:
                    s -= w[1] * x[i, j + 1, k]
                if k > 0:
                    s -= w[2] * x[i, j, k - 1]
                if k < nz - 1:
                    s -= w[2] * x[i, j, k + 1]
                out[i, j, k] = s


@numba.njit(parallel=True, cache=True)
def _dot(a, b):  # pragma: no cover - compiled
    a1, b1 = a.reshape(-1), b.reshape(-1)
    s = 0.0
    for i in numba.prange(a1.size):
        s += a1[i] * b1[i]
    return s


@numba.njit(parallel=True, cache=True)
def _axpy(alpha, x, y):  # pragma: no cover - compiled
    """y += alpha * x"""
    x1, y1 = x.reshape(-1), y.reshape(-1)
    for i in numba.prange(x1.size):
        y1[i] += alpha * x1[i]


@numba.njit(parallel=True, cache=True)
def _xpby(x, beta, y):  # pragma: no cover - compiled
    """y = x + beta * y"""
    x1, y1 = x.reshape(-1), y.reshape(-1)
    for i in numba.prange(x1.size):
        y1[i] = x1[i] + beta * y1[i]


def _lbv_kernel(field: np.ndarray, mask: np.ndarray, weights: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, int]:
    """The harmonic field inside ``mask``'s interior that equals ``field`` on its boundary, by CG.

    Unchecked: float64 arrays of one shape, a mask with an interior, 6-connected boundary."""
    interior = ndi.binary_erosion(mask)
    boundary = mask & ~interior
    known = np.where(boundary, field, 0.0)
    rhs = np.empty_like(field)
    _apply(known, np.ones(field.shape, np.bool_), weights, rhs)  # -L applied to the boundary values ...
    rhs = np.where(interior, -rhs, 0.0)  # ... moved to the right-hand side: -L b_in = L b_known on the interior
    x = np.where(interior, field, 0.0)  # the total field itself: only its small local part is far from harmonic
    ax = np.empty_like(x)
    _apply(x, interior, weights, ax)
    r = rhs - ax
    p = r.copy()
    rr = _dot(r, r)
    stop = (tol * max(np.sqrt(_dot(rhs, rhs)), 1e-30)) ** 2
    it = 0
    while it < max_iter and rr > stop:
        _apply(p, interior, weights, ax)
        alpha = rr / _dot(p, ax)
        _axpy(alpha, p, x)
        _axpy(-alpha, ax, r)
        rr_new = _dot(r, r)
        _xpby(r, rr_new / rr, p)
        rr = rr_new
        it += 1
    return x + known, it


def lbv(
    total_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    *,
    tol: float = 1e-6,
    max_iter: int = 2000,
    erode: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Local field by LBV: the total field minus the harmonic field that matches it on the mask's boundary.

    Parameters
    ----------
    total_field : (X, Y, Z) array
        Unwrapped field (any unit; the local field comes out in the same).
    mask : (X, Y, Z) array
        Brain mask.
    voxel_size : 3 floats, mm
    tol, max_iter
        Conjugate gradients stop at a residual of ``tol`` times the right-hand side's, or after
        ``max_iter`` iterations.
    erode : int
        Voxels taken off the mask's edge for the result (the boundary layer itself carries no
        local field): 1 by default.

    Returns
    -------
    (local field, the mask where it has values); zero outside that mask.
    """
    f = np.asarray(total_field)
    m = np.asarray(mask) > 0
    if f.ndim != 3 or f.shape != m.shape:
        raise InputError(f"field {f.shape} and mask {m.shape} must be 3D arrays of one shape")
    if not np.all(np.isfinite(f[m])):
        raise InputError("the field has NaN or infinite values inside the mask")
    v = check_voxel_size(voxel_size)
    if not isinstance(erode, (int, np.integer)) or erode < 1:
        raise InputError(f"erode must be a whole number of voxels >= 1, got {erode!r}")
    out = np.zeros(f.shape, np.float32)
    covered = ndi.binary_erosion(m, iterations=int(erode)) if m.any() else m
    if not covered.any():
        raise InputError("the mask has no interior for LBV (too thin or empty)")
    # work on the mask's box with a one-voxel margin: outside it nothing is computed
    idx = np.argwhere(m)
    box = tuple(slice(max(int(a) - 1, 0), int(b) + 2) for a, b in zip(idx.min(0), idx.max(0)))
    weights = (1.0 / v**2).astype(np.float64)
    harmonic, _ = _lbv_kernel(f[box].astype(np.float64), m[box], weights, tol, max_iter)
    local = np.where(covered[box], f[box] - harmonic, 0.0)
    out[box] = local.astype(np.float32)
    return out, covered
