"""Sliding-window inference on NumPy arrays; the predictor is any callable (a backend, a test lambda).

As nnU-Net and MONAI: windows at a step of ``(1 - overlap) * patch``, a Gaussian importance map
(sigma = patch / 8) so window centres count more than their edges, zero padding where the
volume is smaller than the patch, several windows per predictor call, float32 accumulation
into preallocated arrays. Given a region of interest (the brain mask), windows that hold none of
it are not run at all: voxels of the region get exactly the output they would get otherwise
(every window that covers them still runs), and voxels no run window covers are 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InputError

__all__ = ["gaussian_importance", "window_starts", "sliding_window_inference"]

Predictor = Callable[[np.ndarray], np.ndarray]  # (B, C_in, *patch) -> (B, C_out, *patch)


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8.0) -> np.ndarray:
    """Separable Gaussian (sigma = patch * sigma_scale), max 1, strictly positive (min clipped)."""
    g = np.ones(tuple(patch), np.float32)
    for axis, n in enumerate(patch):
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        w = np.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2)
        shape = [1, 1, 1]
        shape[axis] = n
        g = g * w.reshape(shape).astype(np.float32)
    g /= g.max()
    return np.maximum(g, np.float32(1e-3))  # keep edge voxels of edge windows from dividing by ~0


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices covering ``size`` with windows of ``patch`` (size >= patch), evenly spread."""
    if size <= patch:
        return [0]
    step = max(1, int(round(patch * (1.0 - overlap))))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def sliding_window_inference(
    volume: np.ndarray,
    patch: Sequence[int],
    predictor: Predictor,
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    out_channels: int | None = None,
    importance: str = "gaussian",
    roi: np.ndarray | None = None,
) -> np.ndarray:
    """Run ``predictor`` over ``volume`` (C, X, Y, Z) window by window and stitch the outputs.

    Returns (C_out, X, Y, Z) float32. ``importance="constant"`` averages overlapping windows
    with equal weight. ``roi`` (X, Y, Z, bool): run only the windows that hold some of it.
    """
    v = np.asarray(volume, np.float32)
    if v.ndim != 4:
        raise InputError(f"sliding window needs a (C, X, Y, Z) volume, got shape {v.shape}")
    patch = tuple(int(p) for p in patch)
    if len(patch) != 3 or min(patch) < 1:
        raise InputError(f"patch must be three positive sizes, got {patch}")
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must lie in [0, 1), got {overlap}")
    if batch_size < 1:
        raise InputError("batch size must be at least 1")
    spatial = v.shape[1:]
    pad = [max(0, p - s) for p, s in zip(patch, spatial)]
    before = [p // 2 for p in pad]
    if roi is not None:
        roi = np.asarray(roi, bool)
        if roi.shape != spatial:
            raise InputError(f"region of interest shape {roi.shape} differs from the volume's {spatial}")
    if any(pad):
        v = np.pad(v, [(0, 0)] + [(b, p - b) for b, p in zip(before, pad)])
        roi = None if roi is None else np.pad(roi, [(b, p - b) for b, p in zip(before, pad)])
    padded = v.shape[1:]
    weight = gaussian_importance(patch) if importance == "gaussian" else np.ones(patch, np.float32)
    starts = [
        (i, j, k)
        for i in window_starts(padded[0], patch[0], overlap)
        for j in window_starts(padded[1], patch[1], overlap)
        for k in window_starts(padded[2], patch[2], overlap)
    ]
    if roi is not None:
        # windows holding any roi voxel: a summed-area table answers each window in O(1)
        sat = np.pad(roi.astype(np.int64).cumsum(0).cumsum(1).cumsum(2), [(1, 0)] * 3)

        def holds(i, j, k):
            a, b, c = i + patch[0], j + patch[1], k + patch[2]
            return (
                sat[a, b, c] - sat[i, b, c] - sat[a, j, c] - sat[a, b, k] + sat[i, j, c] + sat[i, b, k] + sat[a, j, k] - sat[i, j, k]
            ) > 0

        starts = [st for st in starts if holds(*st)]
        if not starts:
            raise InputError("the region of interest is empty: no window to run")
    acc = None
    norm = np.zeros(padded, np.float32)
    batch = np.empty((batch_size, v.shape[0], *patch), np.float32)
    for b0 in range(0, len(starts), batch_size):
        chunk = starts[b0 : b0 + batch_size]
        for n, (i, j, k) in enumerate(chunk):
            batch[n] = v[:, i : i + patch[0], j : j + patch[1], k : k + patch[2]]
        out = np.asarray(predictor(batch[: len(chunk)]), np.float32)
        if out.ndim != 5 or out.shape[0] != len(chunk) or out.shape[2:] != patch:
            raise InputError(f"predictor returned shape {out.shape}, expected ({len(chunk)}, C, {', '.join(map(str, patch))})")
        if acc is None:
            c_out = out.shape[1] if out_channels is None else out_channels
            acc = np.zeros((c_out, *padded), np.float32)
        for n, (i, j, k) in enumerate(chunk):
            sl = (slice(i, i + patch[0]), slice(j, j + patch[1]), slice(k, k + patch[2]))
            acc[(slice(None), *sl)] += out[n] * weight
            norm[sl] += weight
    if roi is None:
        acc /= norm
    else:
        np.divide(acc, norm, out=acc, where=norm > 0)  # uncovered voxels stay 0
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial))
    return np.ascontiguousarray(acc[(slice(None), *crop)])
