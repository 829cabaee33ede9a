"""QSM physics: dipole kernel, B0 direction from the image geometry, unit conversion.

Conventions
-----------
* Arrays are indexed (i, j, k) in the voxel frame; ``voxel_size`` is in mm along those axes.
* B0 points along the scanner's z axis. A NIfTI affine maps voxel indices to scanner (RAS) mm,
  so the B0 direction in the voxel frame is ``R.T @ [0, 0, 1]`` with ``R`` the affine's rotation.
* Field maps are in ppm of B0; phase in radians; susceptibility in ppm (SI, relative).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import scipy.fft

from .errors import InputError

__all__ = [
    "GAMMA_MHZ_PER_T",
    "b0_direction_from_affine",
    "check_direction",
    "dipole_kernel",
    "dipole_kernel_rfft",
    "dipole_kernel_image_rfft",
    "forward_field",
    "phase_to_ppm",
    "ppm_to_phase",
    "phase_per_ppm",
    "fft_workers",
    "padded_shape",
]

GAMMA_MHZ_PER_T = 42.577478  # proton gyromagnetic ratio / 2 pi


def fft_workers() -> int:
    """Threads for scipy.fft: $PEDQ_THREADS when set (a cohort's workers share the cores), else every
    core this process may use."""
    import os

    if os.environ.get("PEDQ_THREADS", "").isdigit() and int(os.environ["PEDQ_THREADS"]) > 0:
        return int(os.environ["PEDQ_THREADS"])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def check_direction(direction: Sequence[float]) -> np.ndarray:
    """Return ``direction`` as a float64 unit 3-vector, or raise InputError."""
    b = np.asarray(direction, dtype=np.float64).reshape(-1)
    if b.shape != (3,) or not np.all(np.isfinite(b)):
        raise InputError(f"B0 direction must be three finite numbers, got {direction!r}")
    norm = np.linalg.norm(b)
    if norm < 1e-6:
        raise InputError("B0 direction must not be the zero vector")
    return b / norm


def check_voxel_size(voxel_size: Sequence[float]) -> np.ndarray:
    v = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"voxel size must be three positive finite numbers (mm), got {voxel_size!r}")
    return v


def b0_direction_from_affine(affine: np.ndarray) -> np.ndarray:
    """Unit B0 direction in the voxel frame of an image with the given (NIfTI, RAS) affine.

    Parameters
    ----------
    affine : (4, 4) array
        Voxel-to-scanner transform. B0 is the scanner z axis.

    Returns
    -------
    (3,) float64 unit vector ``b`` with ``b[a]`` the cosine between B0 and voxel axis ``a``.

    Raises
    ------
    InputError
        If the affine is not finite or its 3x3 part is singular.
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError("image affine must be a finite 4x4 matrix")
    m = a[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms < 1e-9) or abs(np.linalg.det(m)) < 1e-12:
        raise InputError("image affine is singular: cannot tell the B0 direction")
    r = m / norms
    # For an oblique (sheared) affine R is not exactly orthonormal; project B0 with the inverse,
    # which is what "the voxel-frame direction of world z" means, and normalise.
    b = np.linalg.solve(r, np.array([0.0, 0.0, 1.0]))
    return b / np.linalg.norm(b)


def _kgrid(shape: Sequence[int], voxel_size: Sequence[float], real: bool) -> list[np.ndarray]:
    ks = []
    for axis, (n, d) in enumerate(zip(shape, voxel_size)):
        if real and axis == len(shape) - 1:
            k = np.fft.rfftfreq(n, d=d)
        else:
            k = np.fft.fftfreq(n, d=d)
        ks.append(k.astype(np.float64))
    return ks


@numba.njit(parallel=True, fastmath=True, cache=True)
def _fill_kspace_dipole(kx, ky, kz, b, out):  # pragma: no cover - compiled
    for i in numba.prange(kx.size):
        for j in range(ky.size):
            for k in range(kz.size):
                k2 = kx[i] * kx[i] + ky[j] * ky[j] + kz[k] * kz[k]
                if k2 == 0.0:
                    out[i, j, k] = 0.0  # mean field undetermined (Lorentz sphere): 0 by convention
                else:
                    kb = kx[i] * b[0] + ky[j] * b[1] + kz[k] * b[2]
                    out[i, j, k] = 1.0 / 3.0 - kb * kb / k2


@numba.njit(parallel=True, fastmath=True, cache=True)
def _fill_image_dipole(x, y, z, b, volume, out):  # pragma: no cover - compiled
    c = volume / (4.0 * np.pi)
    for i in numba.prange(x.size):
        for j in range(y.size):
            for k in range(z.size):
                r2 = x[i] * x[i] + y[j] * y[j] + z[k] * z[k]
                if r2 == 0.0:
                    out[i, j, k] = 0.0
                else:
                    rb = x[i] * b[0] + y[j] * b[1] + z[k] * b[2]
                    out[i, j, k] = c * (3.0 * rb * rb / r2 - 1.0) / (r2 * np.sqrt(r2))


def _dipole(shape, voxel_size, direction, real: bool) -> np.ndarray:
    b = check_direction(direction)
    v = check_voxel_size(voxel_size)
    kx, ky, kz = _kgrid(shape, v, real)
    out = np.empty((kx.size, ky.size, kz.size), np.float32)
    _fill_kspace_dipole(kx, ky, kz, b, out)
    return out


def dipole_kernel(shape: Sequence[int], voxel_size: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """Unit dipole kernel in k-space, ``D(k) = 1/3 - (k.b)^2 / |k|^2``, on the full FFT grid.

    ``k`` is built from the true voxel sizes, so anisotropic voxels are handled exactly.
    D(0) is set to 0. Returned as float32 with the FFT (not shifted) layout.
    """
    return _dipole(tuple(int(s) for s in shape), voxel_size, direction, real=False)


def dipole_kernel_rfft(shape: Sequence[int], voxel_size: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """As :func:`dipole_kernel`, on the half grid of ``scipy.fft.rfftn`` (last axis ``n//2+1``)."""
    return _dipole(tuple(int(s) for s in shape), voxel_size, direction, real=True)


def padded_shape(shape: Sequence[int], factor: float = 2.0) -> tuple[int, ...]:
    """Smallest fast FFT size at least ``factor`` times each dimension."""
    return tuple(scipy.fft.next_fast_len(int(np.ceil(n * factor)), real=True) for n in shape)


def dipole_kernel_image_rfft(shape: Sequence[int], voxel_size: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """rFFT of the dipole kernel sampled in image space, ``V (3 cos^2 theta - 1) / (4 pi r^3)``.

    Each voxel acts as a point dipole (self term 0). Unlike the k-space kernel applied to a
    voxelised source, its field is exactly harmonic away from the sources: no Gibbs ringing from
    sharp air/bone steps leaks into the brain. Used by the simulator for the field of the head.
    """
    b = check_direction(direction)
    v = check_voxel_size(voxel_size)
    axes = []
    for n, h in zip(shape, v):
        i = np.arange(n)
        axes.append((np.where(i <= n // 2, i, i - n) * h).astype(np.float64))
    d = np.empty(tuple(int(n) for n in shape), np.float32)
    _fill_image_dipole(axes[0], axes[1], axes[2], b, float(np.prod(v)), d)
    return scipy.fft.rfftn(d, workers=fft_workers()).real.astype(np.float32)


def forward_field(
    chi: np.ndarray,
    voxel_size: Sequence[float],
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    pad_factor: float = 2.0,
    kernel: str = "kspace",
) -> np.ndarray:
    """Field (ppm) of a susceptibility distribution (ppm): ``F^-1[D F chi]``.

    The volume is zero-padded to ``pad_factor`` times its size (fast FFT lengths) before the
    FFT, so a dipole field does not wrap around the box (``pad_factor=1`` disables padding).
    ``kernel="kspace"`` uses the analytic k-space kernel (the model the inversions assume);
    ``kernel="image"`` the image-space sampled kernel (:func:`dipole_kernel_image_rfft`).
    """
    chi = np.asarray(chi)
    if chi.ndim != 3:
        raise InputError(f"chi must be 3D, got shape {chi.shape}")
    pshape = padded_shape(chi.shape, pad_factor) if pad_factor > 1 else chi.shape
    if kernel == "kspace":
        d = dipole_kernel_rfft(pshape, voxel_size, direction)
    elif kernel == "image":
        d = dipole_kernel_image_rfft(pshape, voxel_size, direction)
    else:
        raise InputError(f"unknown dipole kernel {kernel!r} (kspace, image)")
    w = fft_workers()
    spec = scipy.fft.rfftn(chi.astype(np.float32, copy=False), s=pshape, workers=w)
    spec *= d
    field = scipy.fft.irfftn(spec, s=pshape, workers=w)
    return np.ascontiguousarray(field[: chi.shape[0], : chi.shape[1], : chi.shape[2]], dtype=np.float32)


def _check_te_b0(echo_time: float, field_strength: float) -> None:
    if not np.isfinite(echo_time) or echo_time <= 0:
        raise InputError(f"echo time must be positive (seconds), got {echo_time}")
    if not np.isfinite(field_strength) or field_strength <= 0:
        raise InputError(f"field strength must be positive (tesla), got {field_strength}")


def phase_to_ppm(phase: np.ndarray, echo_time: float, field_strength: float) -> np.ndarray:
    """Phase (rad) -> field (ppm): ``phase / (2 pi gamma B0 TE) * 1e6``; TE in s, B0 in T."""
    _check_te_b0(echo_time, field_strength)
    scale = 1e6 / (2.0 * np.pi * GAMMA_MHZ_PER_T * 1e6 * field_strength * echo_time)
    return (np.asarray(phase, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def phase_per_ppm(echo_time: float, field_strength: float) -> float:
    """Radians of phase per ppm of field at ``echo_time`` (s) and ``field_strength`` (T): 2 pi gamma B0 TE."""
    return 2.0 * np.pi * GAMMA_MHZ_PER_T * field_strength * echo_time


def ppm_to_phase(field_ppm: np.ndarray, echo_time: float, field_strength: float) -> np.ndarray:
    """Field (ppm) -> phase (rad), the inverse of :func:`phase_to_ppm`."""
    _check_te_b0(echo_time, field_strength)
    scale = 2.0 * np.pi * GAMMA_MHZ_PER_T * 1e6 * field_strength * echo_time * 1e-6
    return (np.asarray(field_ppm, dtype=np.float32) * np.float32(scale)).astype(np.float32)
