"""Work on the mask's bounding box, zero-padded so dipole fields do not wrap around the FFT box."""

from __future__ import annotations

import numpy as np
import scipy.fft

from ..errors import InputError

__all__ = ["crop_to_mask", "PaddedBox"]


class PaddedBox:
    """The bounding box of a mask inside a larger zero-padded FFT grid.

    ``embed(x)`` copies the box of ``x`` into a padded array; ``extract(y)`` puts the box back on
    the full input grid (zeros elsewhere).
    """

    def __init__(self, mask: np.ndarray, pad_factor: float = 1.5):
        m = np.asarray(mask, bool)
        if not m.any():
            raise InputError("brain mask is empty")
        self.full_shape = m.shape
        # per-axis projections: far cheaper than np.nonzero on a whole volume
        spans = [np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
        self.lo = tuple(int(s[0]) for s in spans)
        self.hi = tuple(int(s[-1]) + 1 for s in spans)
        box = tuple(h - l for l, h in zip(self.lo, self.hi))
        self.shape = tuple(scipy.fft.next_fast_len(int(np.ceil(n * pad_factor)) + 2, real=True) for n in box)
        self.box = box

    @property
    def _src(self):
        return tuple(slice(l, h) for l, h in zip(self.lo, self.hi))

    @property
    def _dst(self):
        return tuple(slice(0, n) for n in self.box)

    def embed(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        out[self._dst] = x[self._src]
        return out

    def extract(self, y: np.ndarray) -> np.ndarray:
        out = np.zeros(self.full_shape, np.float32)
        out[self._src] = y[self._dst]
        return out


def crop_to_mask(mask: np.ndarray, pad_factor: float = 1.5) -> PaddedBox:
    return PaddedBox(mask, pad_factor)
