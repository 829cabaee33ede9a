"""Classic brain masking from the GRE magnitude (used when no mask model or mask file is given)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from ..errors import InputError
from ..physics import check_voxel_size, fft_workers

__all__ = ["classic_mask", "close_mask", "PLAUSIBLE_SHARE"]


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


def _close_kernel(m: np.ndarray, radius_mm: float, v: np.ndarray) -> np.ndarray:
    """Closing by a ball (FFT morphology) on the mask's bounding box, padded so nothing wraps."""
    pad = np.ceil(radius_mm / v).astype(int) + 2
    idx = np.nonzero(m)
    lo = [max(int(i.min()) - p, 0) for i, p in zip(idx, pad)]
    hi = [min(int(i.max()) + p + 1, n) for i, p, n in zip(idx, pad, m.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # grid edges inside the padding are padded with zeros too: a mask touching the edge is not wrapped
    sub = np.pad(m[box], [(p, p) for p in pad])
    ball = _ball_spectrum(sub.shape, radius_mm, v)
    closed = _erode(_dilate(sub, ball), ball)
    crop = tuple(slice(p, p + (b - a)) for p, a, b in zip(pad, lo, hi))
    out = m.copy()
    out[box] |= ndi.binary_fill_holes(closed[crop])
    return out


def close_mask(mask: np.ndarray, radius_mm: float, voxel_size: Sequence[float]) -> np.ndarray:
    """Morphological closing of a brain mask by a ball of ``radius_mm``, holes filled.

    Adds the pits and notches narrower than the ball (dark veins, bright CSF the masking network
    left out at the brain's surface) and never removes a voxel. It matters for background field
    removal: V-SHARP keeps only the voxels whose smallest sphere fits inside the mask, so every
    notch of the mask's surface costs a sphere's worth of brain.

    ``radius_mm`` 0 returns the mask unchanged (as bool).

    Raises
    ------
    InputError
        If the mask is not 3D, the radius is negative or not finite, or the voxel size is invalid.
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"mask must be 3D, got shape {m.shape}")
    if isinstance(radius_mm, bool) or not isinstance(radius_mm, numbers.Real) or not np.isfinite(radius_mm) or radius_mm < 0:
        raise InputError(f"the closing radius must be a number of mm >= 0, got {radius_mm!r}")
    v = check_voxel_size(voxel_size)
    m = m > 0
    if radius_mm == 0 or not m.any():
        return m
    return _close_kernel(m, float(radius_mm), v)


# the brain's plausible share of the head (the magnitude's support, holes filled): below it a mask
# has missed the brain, above it it has taken in the scalp and neck
PLAUSIBLE_SHARE = (0.15, 0.85)


def classic_mask(
    magnitude: np.ndarray,
    voxel_size: Sequence[float],
    *,
    erode_mm: float = 3.0,
    threshold_scale: float = 1.0,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Brain mask by robust threshold, morphology, largest component and hole filling.

    The magnitude is first normalised by a smooth estimate of the coil shading, then thresholded
    at Otsu's level. An opening of ``erode_mm`` cuts the thin bridges between brain and scalp
    (thin infant skulls) before the largest component is kept; a dilation by the same ball and
    hole filling restore the brain edge and the ventricles.

    It is the fallback when no masking network is at hand, so it never refuses a head: when the
    first pass finds no brain of a plausible size it tries a thinner opening, then a lower
    threshold, and at last takes the head's interior (its signal, eroded by 6 mm). Whenever the
    mask is doubtful (a fallback was needed, or its share of the head lies outside
    ``PLAUSIBLE_SHARE``) a sentence saying so is appended to ``notes``.

    Returns
    -------
    bool array of the magnitude's shape.

    Raises
    ------
    InputError
        If the magnitude is not 3D, not finite, or all zero (no head in it).
    """
    mag = np.asarray(magnitude, dtype=np.float32)
    if mag.ndim != 3:
        raise InputError(f"magnitude must be 3D, got shape {mag.shape}")
    if not np.all(np.isfinite(mag)):
        raise InputError("magnitude contains NaN or infinite values")
    if float(mag.max()) <= 0:
        raise InputError("magnitude is all zero: nothing to mask")
    v = np.asarray(voxel_size, dtype=np.float64)
    ml = float(np.prod(v)) / 1000.0
    support = (mag > 0.1 * np.percentile(mag[mag > 0], 99)).astype(np.float32)
    norm = _shading_corrected(mag, support, v)
    otsu = _otsu(norm[support > 0])
    head = ndi.binary_fill_holes(_largest_component(support > 0))
    head_voxels = max(int(head.sum()), 1)
    attempts = (
        (erode_mm, threshold_scale, None),
        (0.5 * erode_mm, threshold_scale, "a thinner opening"),
        (0.5 * erode_mm, 0.6 * threshold_scale, "a lower threshold"),
    )
    for erode, scale, how in attempts:  # noqa: B007 (how says, after the loop, which attempt was kept)
        m = _threshold_mask(norm, otsu * scale, erode, v)
        if m.sum() >= PLAUSIBLE_SHARE[0] * head_voxels:
            break
    else:
        m = _erode(head, _ball_spectrum(head.shape, 6.0, v))
        if not m.any():
            m = head
        how = "the head's interior (its signal eroded by 6 mm): no brain boundary was found"
    share = float(m.sum()) / head_voxels
    if notes is not None and (how is not None or not PLAUSIBLE_SHARE[0] <= share <= PLAUSIBLE_SHARE[1]):
        notes.append(
            f"classic mask doubtful ({float(m.sum()) * ml:.0f} mL, {share:.0%} of the head"
            f"{'; from ' + how if how else ''}): check mask.nii.gz, or give --mask"
        )
    return m


def _shading_corrected(mag: np.ndarray, support: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The magnitude divided by a smooth estimate of the coil shading (ratio of Gaussian filters of
    the image and of its support, so the edges do not darken), computed on a ~4 mm grid."""
    step = np.maximum(1, np.round(4.0 / v)).astype(int)
    sub = tuple(slice(None, None, s) for s in step)
    sigma = [15.0 / (vi * si) for vi, si in zip(v, step)]
    small = ndi.gaussian_filter(mag[sub] * support[sub], sigma) / np.maximum(ndi.gaussian_filter(support[sub], sigma), 1e-3)
    shading = ndi.zoom(small, [n / m for n, m in zip(mag.shape, small.shape)], order=1)
    shading = np.pad(shading, [(0, max(0, n - s)) for n, s in zip(mag.shape, shading.shape)], mode="edge")[
        : mag.shape[0], : mag.shape[1], : mag.shape[2]
    ]
    return np.where(support > 0, mag / np.maximum(shading, 1e-6), 0.0)


def _threshold_mask(norm: np.ndarray, thr: float, erode_mm: float, v: np.ndarray) -> np.ndarray:
    """Threshold, opening by a ball of ``erode_mm``, largest component, closing, hole filling.

    Ball morphology by FFT convolution with a ball in mm: true balls on anisotropic grids, and far
    faster than binary_opening or distance transforms with a large structuring element."""
    m = norm > thr
    small, large = _ball_spectrum(m.shape, erode_mm, v), _ball_spectrum(m.shape, 2.0 * erode_mm, v)
    m = _dilate(_erode(m, small), small)
    m = _largest_component(m)
    m = _erode(_dilate(m, large), large)
    return ndi.binary_fill_holes(m)


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
