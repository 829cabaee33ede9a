"""The quick-look figure (no plotting library): a QC page of a run, as PNG.

Rows are axial slices, two through the deep grey matter and one above it; columns are the
magnitude with the brain mask's outline, the susceptibility map, and the map with the deep grey
matter labels. The map's window is symmetric about zero, set by the brain's own values (the 98th
percentile of |chi| where chi has values), and a colour bar gives it in ppm. Slices are shown in
the neurological convention (the subject's left on the left, anterior up), whatever the voxel
order on disk.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ._font import GLYPH_H, text_mask

__all__ = ["write_png", "quicklook", "quicklook_slices", "display_window"]

# FreeSurfer's colours of the deep grey matter structures (left and right alike)
_STRUCTURES = (
    ("thalamus", (10, 49), (0, 118, 14)),
    ("caudate", (11, 50), (122, 186, 220)),
    ("putamen", (12, 51), (236, 13, 176)),
    ("pallidum", (13, 52), (12, 48, 255)),
)
_TEXT = (235, 235, 235)
_BACK = (0, 0, 0)
_SCALE = 2  # text: 10x14 pixels a glyph
_LINE = GLYPH_H * _SCALE + 6


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)


def display_window(qsm: np.ndarray, mask: np.ndarray) -> float:
    """Half-width of the map's window (ppm): the 98th percentile of |chi| where it has values in the brain."""
    values = np.abs(np.asarray(qsm)[np.asarray(mask, bool) & (np.asarray(qsm) != 0) & np.isfinite(qsm)])
    w = float(np.percentile(values, 98)) if values.size else 0.0
    return w if w > 0 else 0.1


def _to_ras(volume: np.ndarray, affine) -> np.ndarray:
    if affine is None:
        return volume
    import nibabel.orientations as nio

    return nio.apply_orientation(volume, nio.io_orientation(np.asarray(affine, float)))


def _ras_voxel_size(affine, shape) -> np.ndarray:
    if affine is None:
        return np.ones(3)
    import nibabel.orientations as nio

    a = np.asarray(affine, float)
    v = np.linalg.norm(a[:3, :3], axis=0)
    order = nio.io_orientation(a)[:, 0].astype(int)  # input axis i becomes output axis order[i]
    out = np.empty(3)
    out[order] = v
    return out


def quicklook_slices(mask: np.ndarray, segmentation: np.ndarray | None, n_slices: int = 3) -> list[int]:
    """Axial indices (along the last axis, RAS order) to show: through the deep grey matter, then
    above it. The deep grey matter is where the labels are, or else the band around the brain's
    centre of mass where it lies in a head."""
    zs = np.flatnonzero(mask.any(axis=(0, 1)))
    if not zs.size:
        return [mask.shape[2] // 2] * n_slices
    labelled = np.flatnonzero(segmentation.any(axis=(0, 1))) if segmentation is not None else np.array([], int)
    if labelled.size:
        lo, hi = int(labelled[0]), int(labelled[-1])
    else:
        centre = float(ndi.center_of_mass(mask)[2])
        half = 0.5 * (zs[-1] - zs[0])
        lo, hi = int(round(centre - 0.15 * half)), int(round(centre + 0.2 * half))
    through = [int(round(lo + f * (hi - lo))) for f in ((0.5,) if n_slices < 3 else (0.35, 0.7))]
    above = [int(round(hi + (k + 1) * (zs[-1] - hi) / (n_slices - len(through) + 1))) for k in range(max(n_slices - len(through), 0))]
    return [int(np.clip(z, 0, mask.shape[2] - 1)) for z in (through + above)[:n_slices]]


def _grey(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def _put_text(canvas: np.ndarray, text: str, row: int, col: int, colour=_TEXT) -> None:
    lit = text_mask(text, _SCALE)
    h = min(lit.shape[0], canvas.shape[0] - row)
    w = min(lit.shape[1], canvas.shape[1] - col)
    if h > 0 and w > 0 and row >= 0 and col >= 0:
        canvas[row : row + h, col : col + w][lit[:h, :w]] = colour


def _text_width(text: str) -> int:
    return text_mask(text, _SCALE).shape[1]


def quicklook(path, magnitude, mask, qsm, segmentation=None, affine=None, n_slices: int = 3) -> None:
    """Write the quick-look PNG of one run (see the module's text). ``affine`` orients the slices
    (none: the voxel axes are taken as RAS)."""
    mag = _to_ras(np.asarray(magnitude, np.float32), affine)
    brain = _to_ras(np.asarray(mask, bool), affine)
    chi = _to_ras(np.asarray(qsm, np.float32), affine)
    seg = _to_ras(np.asarray(segmentation), affine) if segmentation is not None else None
    v = _ras_voxel_size(affine, mag.shape)
    reps = np.maximum(1, np.round(v[:2] / v[:2].min())).astype(int)  # square pixels in the slice
    w = display_window(chi, brain)
    mag_hi = float(np.percentile(mag[brain], 99)) if brain.any() else float(mag.max()) or 1.0
    # the head's box in the slice plane, with a margin: the brain fills the panel
    xs, ys = np.flatnonzero(brain.any(axis=(1, 2))), np.flatnonzero(brain.any(axis=(0, 2)))
    if xs.size:
        mx, my = max(2, int(0.08 * xs.size)), max(2, int(0.08 * ys.size))
        box = (slice(max(xs[0] - mx, 0), xs[-1] + mx + 1), slice(max(ys[0] - my, 0), ys[-1] + my + 1))
    else:
        box = (slice(None), slice(None))
    up = max(1, int(np.ceil(170 / max(brain[box].shape[0] * reps[0], 1))))  # small images: panels wide enough for text

    def show(a2d):  # (x, y) -> display rows (anterior up), columns (left on the left)
        img = a2d[box].T[::-1]
        img = np.repeat(np.repeat(img, reps[1] * up, axis=0), reps[0] * up, axis=1)
        return img

    rows = []
    for z in quicklook_slices(brain, seg, n_slices):
        m = _grey(show(mag[:, :, z]), 0, mag_hi)
        outline = show(brain[:, :, z] & ~ndi.binary_erosion(brain[:, :, z]))
        m[outline] = (255, 220, 0)
        q = _grey(show(chi[:, :, z]), -w, w)
        s = q.copy()
        if seg is not None:
            lab = show(seg[:, :, z])
            for _, numbers, colour in _STRUCTURES:
                on = np.isin(lab, numbers)
                s[on] = (0.45 * s[on] + 0.55 * np.array(colour)).astype(np.uint8)
        gap = np.zeros((m.shape[0], 6, 3), np.uint8)
        rows.append(np.concatenate([m, gap, q, gap, s], axis=1))
    panel_w = rows[0].shape[1] // 3
    body = np.concatenate([np.concatenate([r, np.zeros((6, r.shape[1], 3), np.uint8)], axis=0) for r in rows], axis=0)
    header = np.zeros((_LINE + 4, body.shape[1], 3), np.uint8)
    for k, title in enumerate(("magnitude + mask", "QSM (ppm)", "deep grey matter")):
        _put_text(header, title, 4, k * (panel_w + 4) + 4)
    _put_text(body, "L", 4, 4, (255, 220, 0))
    _put_text(body, "R", 4, panel_w - _text_width("R") - 4, (255, 220, 0))
    page = np.concatenate([header, body], axis=0)
    side = _side_panel(page.shape[0], w, seg is not None)
    write_png(path, np.concatenate([page, side], axis=1))


def _side_panel(height: int, w: float, with_labels: bool) -> np.ndarray:
    """The colour bar (ppm, +w at the top) and the labels' legend."""
    labels = (f"+{w:.3f}", "0", f"-{w:.3f}")
    width = 30 + 8 + max(_text_width(t) for t in labels + ("thalamus", "ppm")) + 8
    panel = np.zeros((height, width, 3), np.uint8)
    top, bar_h = _LINE + 4 + 2 * _SCALE, max(min(height // 2, 256), 60)
    ramp = np.linspace(1.0, 0.0, bar_h)
    panel[top : top + bar_h, 8:30] = (ramp * 255).astype(np.uint8)[:, None, None]
    for text, frac in zip(labels, (0.0, 0.5, 1.0)):
        r = top + int(frac * (bar_h - 1)) - GLYPH_H * _SCALE // 2
        _put_text(panel, text, int(np.clip(r, 0, height - GLYPH_H * _SCALE)), 36)
    _put_text(panel, "ppm", 4, 8)
    if with_labels:
        r = top + bar_h + 2 * _LINE
        for name, _, colour in _STRUCTURES:
            if r + _LINE > height:
                break
            panel[r : r + GLYPH_H * _SCALE, 8:30] = colour
            _put_text(panel, name, r, 36)
            r += _LINE
    return panel
