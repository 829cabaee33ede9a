"""NIfTI reading and writing behind one (array, properties) interface."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["ImageProps", "load_image", "save_image", "MAX_VOXELS"]

# Refuse absurd headers before allocating: 1024^3 voxels is far beyond any GRE protocol.
MAX_VOXELS = 1024**3


@dataclass
class ImageProps:
    """Geometry and provenance of an image: everything but the voxel values."""

    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int, int]
    path: str = ""
    extra: dict = field(default_factory=dict)


def load_image(path: str | os.PathLike, *, name: str = "image") -> tuple[np.ndarray, ImageProps]:
    """Read a 3D NIfTI image as float32 (scaling applied) with its geometry.

    Raises
    ------
    InputError
        Missing or unreadable file, not 3D (a trailing singleton 4th axis is accepted), more
        voxels than :data:`MAX_VOXELS`, non-finite or zero voxel sizes, a singular affine.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{name} file not found: {p}")
    import logging

    nib_log = logging.getLogger("nibabel.global")
    level = nib_log.level
    nib_log.setLevel(logging.ERROR)  # its header fix-up notes would break our one-line messages; we check the header ourselves
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(f"cannot read {name} {p}: {exc}".splitlines()[0]) from None
    finally:
        nib_log.setLevel(level)
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.names is not None:
        raise InputError(
            f"{name} {p.name} has data type {dtype} ({'complex' if dtype.kind == 'c' else 'unsupported'}): "
            "give real-valued magnitude and phase images"
        )
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{name} {p.name} must be a 3D image, got shape {tuple(img.shape)}")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS or min(shape) < 1:
        raise InputError(f"{name} {p.name} claims an implausible size {shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(f"{name} {p.name} has invalid voxel sizes {tuple(zooms)}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name} {p.name} has a singular or non-finite affine")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise InputError(f"cannot read the voxels of {name} {p.name}: {exc}".splitlines()[0]) from None
    voxel_size = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    return np.ascontiguousarray(data), ImageProps(affine=affine, voxel_size=voxel_size, shape=shape, path=str(p))


def save_image(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, *, dtype=np.float32) -> None:
    """Write ``data`` as a NIfTI-1 file with the given affine (qform and sform set, code 1 scanner)."""
    import nibabel as nib

    arr = np.asarray(data).astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
