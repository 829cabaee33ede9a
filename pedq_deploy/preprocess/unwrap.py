"""Phase unwrapping: Laplacian (Schofield & Zhu 2003), least squares, and quality-guided path following.

References
----------
M. A. Schofield and Y. Zhu, "Fast phase unwrapping algorithm for interferometric applications",
Opt. Lett. 28(14):1194-1196, 2003.
D. C. Ghiglia and L. A. Romero, "Robust two-dimensional weighted and unweighted phase unwrapping
that uses fast transforms and iterative methods", J. Opt. Soc. Am. A 11(1):107-117, 1994 (the
unweighted least-squares solution is a Poisson equation on the wrapped phase differences).
M. A. Herraez et al., "Fast two-dimensional phase-unwrapping algorithm based on sorting by
reliability following a noncontinuous path", Appl. Opt. 41(35), 2002 (the quality-guided idea).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import scipy.fft

from ..errors import InputError
from ..physics import check_voxel_size, fft_workers

__all__ = ["laplacian_unwrap", "lsq_unwrap", "quality_unwrap", "unwrap_phase", "UNWRAP_METHODS"]

UNWRAP_METHODS = ("laplacian", "lsq", "quality")


def _check_phase(phase: np.ndarray) -> np.ndarray:
    p = np.asarray(phase)
    if p.ndim != 3:
        raise InputError(f"phase must be 3D, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise InputError("phase contains NaN or infinite values")
    return np.ascontiguousarray(p, dtype=np.float32)


def _discrete_laplacian(shape, voxel_size, real: bool) -> np.ndarray:
    """Eigenvalues of the 7-point Laplacian (periodic) on the FFT grid, float32."""
    parts = []
    for axis, (n, h) in enumerate(zip(shape, voxel_size)):
        if real and axis == 2:
            k = np.arange(n // 2 + 1)
        else:
            k = np.fft.fftfreq(n) * n
        lam = (2.0 * np.cos(2.0 * np.pi * k / n) - 2.0) / (h * h)
        s = [1, 1, 1]
        s[axis] = lam.size
        parts.append(lam.reshape(s))
    return (parts[0] + parts[1] + parts[2]).astype(np.float32)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _exp_i(phase, out):  # pragma: no cover - compiled
    # 1-D views only: ndarray.ravel() inside a Numba kernel may copy, and writes would be lost
    for i in numba.prange(phase.size):
        out[i] = np.complex64(np.cos(phase[i]) + 1j * np.sin(phase[i]))


@numba.njit(parallel=True, fastmath=True, cache=True)
def _scale_complex(spec, lap):  # pragma: no cover - compiled
    n0, n1, n2 = spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                spec[i, j, k] *= lap[i, j, k]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _phase_laplacian(phase, lapz, out):  # pragma: no cover - compiled
    # laplacian(phi) = cos(phi) lap(sin phi) - sin(phi) lap(cos phi) = Im(conj(z) lap(z)), z = exp(i phi)
    for i in numba.prange(phase.size):
        b = lapz[i]
        out[i] = np.cos(phase[i]) * b.imag - np.sin(phase[i]) * b.real


@numba.njit(parallel=True, fastmath=True, cache=True)
def _divide_by_laplacian(spec, lap):  # pragma: no cover - compiled
    n0, n1, n2 = spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                v = lap[i, j, k]
                if v != 0.0:
                    spec[i, j, k] /= v
                else:
                    spec[i, j, k] = 0.0


def _laplacian_unwrap_kernel(phase: np.ndarray, voxel_size: np.ndarray, workers: int) -> np.ndarray:
    shape = phase.shape
    lap_full = _discrete_laplacian(shape, voxel_size, real=False)
    lap_half = _discrete_laplacian(shape, voxel_size, real=True)
    z = np.empty(shape, np.complex64)
    _exp_i(phase.reshape(-1), z.reshape(-1))
    zs = scipy.fft.fftn(z, workers=workers, overwrite_x=True)
    _scale_complex(zs, lap_full)
    del z  # zs may share its buffer (overwrite_x)
    lapz = scipy.fft.ifftn(zs, workers=workers, overwrite_x=True)
    lap_phi = np.empty(shape, np.float32)
    _phase_laplacian(phase.reshape(-1), np.ascontiguousarray(lapz).reshape(-1), lap_phi.reshape(-1))
    del lapz, zs
    spec = scipy.fft.rfftn(lap_phi, workers=workers)
    _divide_by_laplacian(spec, lap_half)
    return scipy.fft.irfftn(spec, s=shape, workers=workers).astype(np.float32, copy=False)


@numba.njit(inline="always", fastmath=True, cache=True)
def _wrap(d):  # pragma: no cover - compiled
    # d moved into [-pi, pi) by a whole multiple of 2 pi
    twopi = 2.0 * np.pi
    return d - twopi * np.floor(d / twopi + 0.5)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _wrapped_difference_laplacian(phase, inv_h2, out):  # pragma: no cover - compiled
    # sum over axes of wrap(p[i+1] - p[i]) - wrap(p[i] - p[i-1]), periodic, over h^2
    n0, n1, n2 = phase.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                c = phase[i, j, k]
                s = 0.0
                for ax in range(3):
                    if ax == 0:
                        lo = phase[(i - 1) % n0, j, k]
                        hi = phase[(i + 1) % n0, j, k]
                    elif ax == 1:
                        lo = phase[i, (j - 1) % n1, k]
                        hi = phase[i, (j + 1) % n1, k]
                    else:
                        lo = phase[i, j, (k - 1) % n2]
                        hi = phase[i, j, (k + 1) % n2]
                    s += (_wrap(hi - c) - _wrap(c - lo)) * inv_h2[ax]
                out[i, j, k] = s


def _lsq_unwrap_kernel(phase: np.ndarray, voxel_size: np.ndarray, workers: int) -> np.ndarray:
    shape = phase.shape
    lap_phi = np.empty(shape, np.float32)
    _wrapped_difference_laplacian(phase, (1.0 / voxel_size**2).astype(np.float64), lap_phi)
    spec = scipy.fft.rfftn(lap_phi, workers=workers)
    del lap_phi
    _divide_by_laplacian(spec, _discrete_laplacian(shape, voxel_size, real=True))
    return scipy.fft.irfftn(spec, s=shape, workers=workers).astype(np.float32, copy=False)


def lsq_unwrap(phase: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *, workers: int | None = None) -> np.ndarray:
    """Unweighted least-squares phase unwrapping (Ghiglia & Romero 1994).

    The Laplacian method with another estimate of the phase's Laplacian: the divergence of the
    wrapped differences between neighbours, ``wrap(p[i+1] - p[i]) - wrap(p[i] - p[i-1])``,
    instead of Schofield & Zhu's ``cos p lap(sin p) - sin p lap(cos p)`` (on a grid: a sum of
    ``sin(p[n] - p[i])``). The two agree where neighbours differ by little; where they differ by
    a sizeable part of pi, the sine shrinks the difference and the error (a cube of the
    difference) is not harmonic, so background field removal keeps it. The wrapped difference is
    exact wherever the true difference is under pi. Long echo times and tilted heads give such
    differences (measured in benchmarks/RESULTS.md, "Unwrapping at long echo times"). Same cost:
    one real FFT pair.

    Parameters and return value as :func:`laplacian_unwrap`.
    """
    p = _check_phase(phase)
    v = check_voxel_size(voxel_size)
    return _lsq_unwrap_kernel(p, v, workers or fft_workers())


def laplacian_unwrap(phase: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *, workers: int | None = None) -> np.ndarray:
    """Laplacian phase unwrapping (Schofield & Zhu 2003).

    Parameters
    ----------
    phase : (X, Y, Z) array
        Wrapped phase in radians.
    voxel_size : 3 floats
        Voxel size in mm (the Laplacian is weighted by the true spacing).
    workers : int, optional
        FFT threads; default all cores.

    Returns
    -------
    float32 array: the unwrapped phase, up to a harmonic function (a constant on a periodic box).
    It is not equal to the wrapped input plus 2 pi multiples voxel by voxel; background field
    removal absorbs the difference.
    """
    p = _check_phase(phase)
    v = check_voxel_size(voxel_size)
    return _laplacian_unwrap_kernel(p, v, workers or fft_workers())


def quality_unwrap(phase: np.ndarray, mask: np.ndarray | None = None, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Quality-guided path-following unwrapping (Cython kernel in csrc/).

    Starting from the most reliable voxel, voxels are unwrapped in order of decreasing
    quality, each against an already unwrapped neighbour. The result differs from the wrapped
    input by an exact multiple of 2 pi at every voxel. Quality is the magnitude where given,
    times a phase-smoothness term (inverse of the second phase differences).

    Parameters
    ----------
    phase : (X, Y, Z) array, radians
    mask : (X, Y, Z) bool array, optional
        Voxels to unwrap; others are returned as they were. Default: all.
    magnitude : (X, Y, Z) array, optional
    """
    from ._quality_unwrap import quality_unwrap_kernel

    p = _check_phase(phase)
    m = np.ones(p.shape, np.uint8) if mask is None else np.ascontiguousarray(mask, dtype=np.uint8)
    if m.shape != p.shape:
        raise InputError(f"mask shape {m.shape} differs from phase shape {p.shape}")
    q = _reliability(p)
    idx = np.flatnonzero(m)
    if magnitude is not None:
        mag = np.asarray(magnitude, dtype=np.float32)
        if mag.shape != p.shape:
            raise InputError(f"magnitude shape {mag.shape} differs from phase shape {p.shape}")
        q *= mag / max(float(np.percentile(mag.reshape(-1)[idx], 99)) if idx.size else 1.0, 1e-12)
    # seeds: only the mask's voxels need ordering (by decreasing quality)
    seeds = idx[np.argsort(-q.reshape(-1)[idx], kind="stable")].astype(np.intp)
    out = p.copy()
    quality_unwrap_kernel(out, m, np.ascontiguousarray(q, dtype=np.float32), seeds)
    return out


@numba.njit(parallel=True, fastmath=True, cache=True)
def _reliability_kernel(p, out):  # pragma: no cover - compiled
    n0, n1, n2 = p.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                s = 0.0
                for ax in range(3):
                    if ax == 0:
                        lo = p[i - 1, j, k] if i > 0 else p[i, j, k]
                        hi = p[i + 1, j, k] if i < n0 - 1 else p[i, j, k]
                    elif ax == 1:
                        lo = p[i, j - 1, k] if j > 0 else p[i, j, k]
                        hi = p[i, j + 1, k] if j < n1 - 1 else p[i, j, k]
                    else:
                        lo = p[i, j, k - 1] if k > 0 else p[i, j, k]
                        hi = p[i, j, k + 1] if k < n2 - 1 else p[i, j, k]
                    s += (_wrap(lo - p[i, j, k]) - _wrap(p[i, j, k] - hi)) ** 2
                out[i, j, k] = 1.0 / (1.0 + np.sqrt(s))


def _reliability(p: np.ndarray) -> np.ndarray:
    out = np.empty(p.shape, np.float32)
    _reliability_kernel(p, out)
    return out


def unwrap_phase(phase: np.ndarray, voxel_size: Sequence[float], method: str = "laplacian", *, mask=None, magnitude=None) -> np.ndarray:
    """Dispatch to :func:`laplacian_unwrap` (``"laplacian"``), :func:`lsq_unwrap` (``"lsq"``) or
    :func:`quality_unwrap` (``"quality"``, which uses ``mask`` and ``magnitude``)."""
    if method == "laplacian":
        return laplacian_unwrap(phase, voxel_size)
    if method == "lsq":
        return lsq_unwrap(phase, voxel_size)
    if method == "quality":
        return quality_unwrap(phase, mask=mask, magnitude=magnitude)
    raise InputError(f"unknown unwrapping method {method!r} ({', '.join(UNWRAP_METHODS)})")
