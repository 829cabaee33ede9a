"""Classic brain masking from the GRE magnitude (used when no mask model or mask file is given)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from ..errors import InputError
from ..physics import fft_workers

__all__ = ["classic_mask"]


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    values = np.asarray(values, np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-6 * max(abs(hi), 1e-30):  # one level only: everything in the support is foreground
        return lo - 1e-6 * max(abs(lo), 1e-30)
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def _ball_spectrum(shape, radius_mm: float, voxel_size) -> np.ndarray:
    """rFFT of a ball of ``radius_mm`` (whole voxels), for FFT morphology."""
    from .vsharp import sphere_kernel

    return scipy.fft.rfftn(sphere_kernel(shape, radius_mm, voxel_size, supersample=1), workers=fft_workers())


def _ball_mean(m: np.ndarray, ball_spec: np.ndarray) -> np.ndarray:
    """Share of the ball around each voxel that lies in ``m`` (FFT convolution)."""
    w = fft_workers()
    return scipy.fft.irfftn(scipy.fft.rfftn(m.astype(np.float32), workers=w) * ball_spec, s=m.shape, workers=w)


def _erode(m: np.ndarray, ball_spec: np.ndarray) -> np.ndarray:
    return _ball_mean(m, ball_spec) > 0.999


def _dilate(m: np.ndarray, ball_spec: np.ndarray) -> np.ndarray:
    return _ball_mean(m, ball_spec) > 1e-3


def _largest_component(m: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def classic_mask(magnitude: np.ndarray, voxel_size: Sequence[float], *, erode_mm: float = 3.0, threshold_scale: float = 1.0) -> np.ndarray:
    """Brain mask by robust threshold, morphology, largest component and hole filling.

    The magnitude is first normalised by a smooth estimate of the coil shading, then thresholded
    at Otsu's level. An opening of ``erode_mm`` cuts the thin bridges between brain and scalp
    (thin infant skulls) before the largest component is kept; a dilation by the same ball and
    hole filling restore the brain edge and the ventricles.

    Returns
    -------
    bool array of the magnitude's shape.

    Raises
    ------
    InputError
        If the magnitude is not 3D, not finite, all zero, or yields an empty mask.
    """
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim != 3:
        raise InputError(f"magnitude must be 3D, got shape {mag.shape}")
    if not np.all(np.isfinite(mag)):
        raise InputError("magnitude contains NaN or infinite values")
    if float(mag.max()) <= 0:
        raise InputError("magnitude is all zero: nothing to mask")
    v = np.asarray(voxel_size, dtype=np.float64)
    # Coil shading varies slowly: divide by a heavily smoothed copy (ratio of Gaussian filters
    # of the image and of its support keeps the edges from darkening), computed on a ~4 mm grid.
    support = (mag > 0.1 * np.percentile(mag[mag > 0], 99)).astype(np.float32)
    step = np.maximum(1, np.round(4.0 / v)).astype(int)
    sub = tuple(slice(None, None, s) for s in step)
    sigma = [15.0 / (vi * si) for vi, si in zip(v, step)]
    small = ndi.gaussian_filter(mag[sub] * support[sub], sigma) / np.maximum(ndi.gaussian_filter(support[sub], sigma), 1e-3)
    shading = ndi.zoom(small, [n / m for n, m in zip(mag.shape, small.shape)], order=1)
    shading = np.pad(shading, [(0, max(0, n - s)) for n, s in zip(mag.shape, shading.shape)], mode="edge")[
        : mag.shape[0], : mag.shape[1], : mag.shape[2]
    ]
    norm = np.where(support > 0, mag / np.maximum(shading, 1e-6), 0.0)
    fg = norm[support > 0]
    thr = _otsu(fg) * threshold_scale
    m = norm > thr
    # ball morphology by FFT convolution with a ball in mm: true balls on anisotropic grids, and
    # far faster than binary_opening or distance transforms with a large structuring element
    small, large = _ball_spectrum(m.shape, erode_mm, v), _ball_spectrum(m.shape, 2.0 * erode_mm, v)
    m = _dilate(_erode(m, small), small)
    m = _largest_component(m)
    m = _erode(_dilate(m, large), large)
    m = ndi.binary_fill_holes(m)
    if not m.any():
        raise InputError("classic masking found no brain: check the magnitude image")
    return m


def normalise_magnitude(magnitude: np.ndarray) -> np.ndarray:
    """Magnitude / its 99th percentile inside the head, clipped to [0, 1.5] (the mask network's input).

    The head is what exceeds a tenth of the 99.9th percentile of the whole volume: computable from
    the magnitude alone, so training and the runtime normalise the same way.
    """
    mag = np.asarray(magnitude, dtype=np.float32)
    top = float(np.percentile(mag, 99.9))
    if not np.isfinite(top) or top <= 0:
        raise InputError("magnitude is all zero: nothing to normalise")
    head = mag > 0.1 * top
    ref = float(np.percentile(mag[head], 99)) if head.any() else top
    return np.clip(mag / ref, 0.0, 1.5).astype(np.float32)
