"""Training crops: draw random patches of a simulated subject in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .simulate import Subject

__all__ = ["Crop", "random_crop", "crop_array"]


@dataclass
class Crop:
    """A patch of one subject with everything a training step needs (float32 / uint8 arrays)."""

    local_field: np.ndarray  # ppm
    chi: np.ndarray  # ppm
    brain_mask: np.ndarray
    magnitude: np.ndarray
    labels: np.ndarray
    b0_direction: np.ndarray  # voxel frame
    voxel_size: tuple[float, float, float]
    origin: tuple[int, int, int]  # index of the crop's first voxel in the subject (may be negative: padded)


def random_crop(
    subject: Subject,
    size=(96, 96, 96),
    rng: np.random.Generator | None = None,
    *,
    brain_fraction: float = 0.9,
    foreground_fraction: float = 0.0,
) -> Crop:
    """A random ``size`` patch whose centre lies in the brain (with probability ``brain_fraction``).

    ``foreground_fraction``: the share of patches centred on a labelled deep grey matter voxel
    instead (nnU-Net's foreground oversampling: eight small structures are otherwise in few
    patches, and a segmentation network learns to answer "background").

    Volumes smaller than the patch along an axis are zero-padded. Copies only the patch: cheap
    next to drawing a subject, so a loader draws several crops per subject.
    """
    rng = rng or np.random.default_rng()
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise InputError(f"crop size must be three positive integers, got {size}")
    shape = subject.brain_mask.shape
    if not 0.0 <= foreground_fraction <= 1.0:
        raise InputError(f"foreground_fraction must lie in [0, 1], got {foreground_fraction}")
    # no extra draw when oversampling is off, so the patches of older runs are unchanged
    if foreground_fraction > 0 and rng.random() < foreground_fraction and subject.labels.any():
        pool = subject.labels
    elif rng.random() < brain_fraction and subject.brain_mask.any():
        pool = subject.brain_mask
    else:
        pool = None
    if pool is not None:  # a voxel of the pool, uniformly
        idx = np.flatnonzero(pool)
        centre = np.unravel_index(idx[rng.integers(idx.size)], shape)
    else:
        centre = tuple(int(rng.integers(n)) for n in shape)
    origin = tuple(int(c) - s // 2 for c, s in zip(centre, size))
    # clamp so the patch stays inside the volume where it can
    origin = tuple(min(max(o, 0), n - s) if n >= s else (n - s) // 2 for o, n, s in zip(origin, shape, size))

    take = lambda a, dtype: crop_array(a, origin, size, dtype)  # noqa: E731
    return Crop(
        take(subject.local_field, np.float32),
        take(subject.chi, np.float32),
        take(subject.brain_mask, np.uint8),
        take(subject.magnitude, np.float32),
        take(subject.labels, np.uint8),
        np.asarray(subject.b0_direction, np.float64),
        subject.voxel_size,
        origin,
    )


def crop_array(a: np.ndarray, origin, size, dtype) -> np.ndarray:
    """The ``size`` box of ``a`` starting at ``origin`` (may stick out: zero-padded there)."""
    out = np.zeros(tuple(size), dtype)
    src = tuple(slice(max(o, 0), min(o + s, n)) for o, s, n in zip(origin, size, a.shape))
    dst = tuple(slice(sl.start - o, sl.stop - o) for o, sl in zip(origin, src))
    out[dst] = a[src]
    return out
