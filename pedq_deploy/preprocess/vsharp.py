"""V-SHARP background field removal (Wu et al. 2012).

Reference
---------
B. Wu, W. Li, A. Guidon, C. Liu, "Whole brain susceptibility mapping using compressed sensing",
Magn. Reson. Med. 67(1):137-147, 2012.

The spherical mean value (SMV) property says a field harmonic inside the brain equals its
mean over any sphere inside the brain. ``(delta - S_r) * field`` therefore removes the background
field wherever the sphere of radius r fits in the mask. V-SHARP uses the largest sphere that
fits at each voxel (large spheres near the centre, small near the edge, so the mask is eroded
only by the smallest radius), then undoes ``delta - S_rmax`` by truncated deconvolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import scipy.fft

from ..errors import InputError
from ..physics import check_voxel_size, fft_workers

__all__ = ["vsharp", "default_radii", "sphere_kernel", "vsharp_fft_count"]


def default_radii(voxel_size: Sequence[float], r_max: float = 12.0, r_min: float | None = None) -> list[float]:
    """SMV radii (mm), largest first.

    The smallest radius defaults to twice the thickest voxel side: a smaller "sphere" holds no
    neighbour along the thick axis, is not a sphere, and leaves background field behind (with
    0.78x0.78x2 mm voxels, radii down to one in-plane voxel made the local field error about
    four times larger). Steps are the thickest voxel side, so each radius adds a new shell of
    voxels along every axis.
    """
    v = check_voxel_size(voxel_size)
    r_min = 2.0 * float(v.max()) if r_min is None else float(r_min)
    step = float(v.max())
    if r_max < r_min:
        return [r_min]
    radii = list(np.arange(r_max, r_min - 1e-6, -step))
    if abs(radii[-1] - r_min) > 1e-6:
        radii.append(r_min)
    return [float(r) for r in radii]


def vsharp_fft_count(n_radii: int) -> int:
    """Real FFTs that :func:`vsharp` needs for ``n_radii`` radii (for the FFT-floor benchmark)."""
    return 3 * n_radii + 4


def sphere_kernel(shape: Sequence[int], radius_mm: float, voxel_size: Sequence[float], supersample: int = 5) -> np.ndarray:
    """Normalised ball of ``radius_mm`` centred at voxel (0, 0, 0) with periodic wrap.

    Each voxel is weighted by the share of it that lies inside the ball (``supersample``^3
    points per voxel). On anisotropic grids a ball of whole voxels has unequal second moments
    along the axes, which breaks the mean value property for harmonic fields (a residual of
    curvature x moment mismatch, large next to a neonate's tiny local field); partial-volume
    weights bring the moments close to the continuous ball's.
    """
    v = np.asarray(voxel_size, dtype=np.float64)
    half = [int(np.ceil(radius_mm / vi + 0.5)) for vi in v]
    if any(2 * h + 1 > n for h, n in zip(half, shape)):
        raise InputError(f"SMV radius {radius_mm} mm does not fit the image {tuple(shape)}")
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    axes = [((np.arange(-h, h + 1)[:, None] + offs[None, :]) * vi) for h, vi in zip(half, v)]
    # squared distance of each sub-sample: (nx, s, ny, s, nz, s)
    d2 = (
        (axes[0] ** 2)[:, :, None, None, None, None]
        + (axes[1] ** 2)[None, None, :, :, None, None]
        + (axes[2] ** 2)[None, None, None, None, :, :]
    )
    ball = (d2 <= radius_mm**2).mean(axis=(1, 3, 5)).astype(np.float64)
    ball /= ball.sum()
    k = np.zeros(tuple(shape), np.float32)
    idx = np.ix_(*[np.arange(-h, h + 1) % n for h, n in zip(half, shape)])
    k[idx] = ball.astype(np.float32)
    return k


@numba.njit(parallel=True, cache=True)
def _accumulate(hp, smv_mask, out, done, level):  # pragma: no cover - compiled
    # 1-D views only: ndarray.ravel() inside a Numba kernel may copy, and writes would be lost
    for i in numba.prange(hp.size):
        if done[i] == 0 and smv_mask[i] > level:
            out[i] = hp[i]
            done[i] = 1


@numba.njit(parallel=True, fastmath=True, cache=True)
def _smv_products(m_spec, f_spec, s_spec, m_out, f_out):  # pragma: no cover - compiled
    """m_out = S M (SMV of the mask), f_out = (1 - S) F (high-passed field), in one pass."""
    n0, n1, n2 = m_spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                s = s_spec[i, j, k].real
                m_out[i, j, k] = m_spec[i, j, k] * s
                f_out[i, j, k] = f_spec[i, j, k] * (1.0 - s)


@numba.njit(parallel=True, cache=True)
def _tsvd_divide(spec, dker, threshold):  # pragma: no cover - compiled
    n0, n1, n2 = spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                d = dker[i, j, k]
                if abs(d) > threshold:
                    spec[i, j, k] /= d
                else:
                    spec[i, j, k] = 0.0


def _vsharp_kernel(field, mask, voxel_size, radii, threshold, workers):
    shape = field.shape
    f_spec = scipy.fft.rfftn(field * mask, workers=workers)
    m_spec = scipy.fft.rfftn(mask, workers=workers)
    out = np.zeros(shape, np.float32)
    done = np.zeros(shape, np.uint8)
    d_max = None
    m_buf = np.empty_like(m_spec)
    f_buf = np.empty_like(f_spec)
    for r in radii:
        s = scipy.fft.rfftn(sphere_kernel(shape, r, voxel_size), workers=workers)
        _smv_products(m_spec, f_spec, s, m_buf, f_buf)
        smv_mask = scipy.fft.irfftn(m_buf, s=shape, workers=workers)
        hp = scipy.fft.irfftn(f_buf, s=shape, workers=workers)
        # a voxel belongs to the eroded mask when the whole sphere lies in the brain mask
        _accumulate(
            np.ascontiguousarray(hp, np.float32).reshape(-1),
            np.ascontiguousarray(smv_mask, np.float32).reshape(-1),
            out.reshape(-1),
            done.reshape(-1),
            np.float32(0.999),
        )
        if d_max is None:
            d_max = (1.0 - s.real).astype(np.float32)
    spec = scipy.fft.rfftn(out, workers=workers)
    _tsvd_divide(spec, d_max, np.float32(threshold))
    local = scipy.fft.irfftn(spec, s=shape, workers=workers).astype(np.float32, copy=False)
    final = done.astype(bool)
    local[~final] = 0.0
    return local, final


def vsharp(
    field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    radii: Sequence[float] | None = None,
    threshold: float = 0.05,
    *,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Remove the background field with V-SHARP.

    Parameters
    ----------
    field : (X, Y, Z) array
        Total field (ppm or rad: the operation is linear), unwrapped.
    mask : (X, Y, Z) bool array
        Brain mask.
    voxel_size : 3 floats, mm
    radii : floats, mm, optional
        SMV radii; default :func:`default_radii` (12 mm down to 2x the thickest voxel side).
    threshold : float
        TSVD threshold on ``1 - S_rmax`` for the deconvolution (default 0.05).

    Returns
    -------
    local_field : float32 array, zero outside ``eroded_mask``
    eroded_mask : bool array, the mask eroded by the smallest sphere

    Raises
    ------
    InputError
        Shapes differ, non-finite field, empty mask, a non-positive radius or threshold.
    """
    f = np.asarray(field)
    m = np.asarray(mask)
    if f.ndim != 3 or f.shape != m.shape:
        raise InputError(f"field {f.shape} and mask {m.shape} must be 3D of one shape")
    if not np.all(np.isfinite(f)):
        raise InputError("field contains NaN or infinite values")
    v = check_voxel_size(voxel_size)
    rs = sorted((float(r) for r in (radii if radii is not None else default_radii(v))), reverse=True)
    if not rs or rs[-1] <= 0:
        raise InputError(f"SMV radii must be positive, got {radii!r}")
    if not 0 < threshold < 1:
        raise InputError(f"V-SHARP threshold must lie in (0, 1), got {threshold}")
    mf = (m > 0).astype(np.float32)
    if not mf.any():
        raise InputError("brain mask is empty")
    local, eroded = _vsharp_kernel(np.ascontiguousarray(f, np.float32), mf, v, rs, threshold, workers or fft_workers())
    if not eroded.any():
        raise InputError(f"brain mask vanishes when eroded by the smallest SMV radius ({rs[-1]} mm)")
    return local, eroded
