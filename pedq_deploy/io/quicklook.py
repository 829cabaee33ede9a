"""A quick-look PNG (no plotting library): magnitude with mask outline, QSM, segmentation overlay."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

__all__ = ["write_png", "quicklook"]

_COLOURS = {10: (230, 148, 34), 49: (230, 148, 34), 11: (122, 186, 220), 50: (122, 186, 220),
            12: (236, 13, 176), 51: (236, 13, 176), 13: (12, 48, 255), 52: (12, 48, 255)}


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def _grey(img, lo, hi):
    g = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def quicklook(path, magnitude, mask, qsm, segmentation=None, n_slices: int = 3) -> None:
    """Rows: axial slices through the brain; columns: magnitude + mask outline, QSM (-0.1..0.1 ppm), QSM + labels."""
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    picks = np.linspace(zs[0], zs[-1], n_slices + 2)[1:-1].astype(int) if zs.size else [mask.shape[2] // 2]
    mag_hi = float(np.percentile(magnitude[mask], 99)) if mask.any() else float(magnitude.max())
    rows = []
    for z in picks:
        mag = _grey(magnitude[:, :, z].T[::-1], 0, mag_hi)
        edge = (mask[:, :, z] & ~ndi.binary_erosion(mask[:, :, z])).T[::-1]
        mag[edge] = (255, 220, 0)
        q = _grey(qsm[:, :, z].T[::-1], -0.1, 0.1)
        s = q.copy()
        if segmentation is not None:
            lab = segmentation[:, :, z].T[::-1]
            for number, colour in _COLOURS.items():
                s[lab == number] = (0.5 * s[lab == number] + 0.5 * np.array(colour)).astype(np.uint8)
        rows.append(np.concatenate([mag, q, s], axis=1))
    write_png(path, np.concatenate(rows, axis=0))
