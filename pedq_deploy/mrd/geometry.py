"""MRD images <-> 3D volumes with the affine a NIfTI of the series would have.

Geometry of an MRD image: ``position`` is the centre of the image's field of view in patient LPS
millimetres (the MRD convention; scanners send it so), ``read_dir`` / ``phase_dir`` /
``slice_dir`` the unit axes of x (columns), y (rows) and z, ``field_of_view`` the extent in mm and
``matrix_size`` the voxel counts. A series arrives as 2D slices (matrix z = 1) or one 3D image per
contrast. The volume axes are (read, phase, slice); the affine maps them to RAS (x and y of LPS
flipped), so B0 in the voxel frame follows from it as for any NIfTI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..io.orientation import lps_to_ras, slice_spacing

__all__ = ["SeriesVolume", "assemble", "volume_to_images", "IMTYPE_MAGNITUDE", "IMTYPE_PHASE"]

IMTYPE_MAGNITUDE = 1
IMTYPE_PHASE = 2


@dataclass
class SeriesVolume:
    data: np.ndarray  # (X=read, Y=phase, Z=slice) float32
    affine: np.ndarray  # voxel -> RAS mm
    voxel_size: tuple[float, float, float]
    templates: list  # the input images' headers, in volume slice order (2D) or one (3D)
    is_3d: bool


def _vec(v) -> np.ndarray:
    return np.array([float(x) for x in v], np.float64)


def _image_volume(image) -> np.ndarray:
    d = np.asarray(image.data)  # (channels, z, y, x)
    if d.shape[0] != 1:
        raise InputError(f"MRD image with {d.shape[0]} channels: send coil-combined images")
    if np.iscomplexobj(d):
        raise InputError("complex MRD images: send magnitude and phase as separate image types")
    return np.transpose(d[0], (2, 1, 0)).astype(np.float32)  # -> (x, y, z)


def assemble(images: list) -> SeriesVolume:
    """One 3D volume from the MRD images of one contrast (2D slices in any order, or one 3D image)."""
    if not images:
        raise InputError("no images of this type were received")
    first = images[0]
    rd, pd, sd = _vec(first.read_dir), _vec(first.phase_dir), _vec(first.slice_dir)
    for name, v in (("read_dir", rd), ("phase_dir", pd), ("slice_dir", sd)):
        if not np.isfinite(v).all() or abs(np.linalg.norm(v) - 1) > 1e-3:
            raise InputError(f"MRD image {name} {tuple(v)} is not a unit vector")
    nx, ny, nz = (int(x) for x in first.matrix_size)
    fov = _vec(first.field_of_view)
    if not np.all(np.isfinite(fov)) or np.any(fov <= 0):
        raise InputError(f"MRD image field_of_view {tuple(fov)} must be positive")
    dx, dy = fov[0] / nx, fov[1] / ny
    if nz > 1:  # one 3D image
        if len(images) != 1:
            raise InputError(f"{len(images)} 3D images of one type and echo: expected one")
        vol = _image_volume(first)
        dz = fov[2] / nz
        centre = _vec(first.position)
        corner = centre - rd * (fov[0] - dx) / 2 - pd * (fov[1] - dy) / 2 - sd * (fov[2] - dz) / 2
        is_3d, ordered = True, [first]
    else:
        for im in images[1:]:
            if tuple(int(x) for x in im.matrix_size) != (nx, ny, 1) or not (
                np.allclose(_vec(im.read_dir), rd, atol=1e-4) and np.allclose(_vec(im.phase_dir), pd, atol=1e-4)
            ):
                raise InputError("the slices of one series differ in matrix size or orientation")
        ordered = sorted(images, key=lambda im: float(_vec(im.position) @ sd))
        dz = slice_spacing(np.array([float(_vec(im.position) @ sd) for im in ordered]), float(fov[2]), "MRD series")
        vol = np.stack([_image_volume(im)[:, :, 0] for im in ordered], axis=2)
        corner = _vec(ordered[0].position) - rd * (fov[0] - dx) / 2 - pd * (fov[1] - dy) / 2
        is_3d = False
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([rd * dx, pd * dy, sd * dz])
    lps[:3, 3] = corner
    return SeriesVolume(vol, lps_to_ras(lps), (float(dx), float(dy), float(dz)), ordered, is_3d)


def volume_to_images(
    volume: np.ndarray, like: SeriesVolume, *, image_type: int, series_index: int, scale: float, dtype=np.int16, meta: dict | None = None
) -> list:
    """MRD images of ``volume`` (on ``like``'s grid) laid out as the input was: same slices, same
    positions and directions; values stored as ``round(volume * scale)`` of ``dtype``."""
    import ismrmrd

    if volume.shape != like.data.shape:
        raise InputError(f"volume shape {volume.shape} differs from the series grid {like.data.shape}")
    info = np.iinfo(dtype)
    stored = np.clip(np.rint(np.nan_to_num(volume) * scale), info.min, info.max).astype(dtype)
    blocks = [stored] if like.is_3d else [stored[:, :, k : k + 1] for k in range(stored.shape[2])]
    out = []
    for k, (block, tmpl) in enumerate(zip(blocks, like.templates)):
        im = ismrmrd.Image.from_array(np.ascontiguousarray(np.transpose(block, (2, 1, 0))), transpose=False)
        head = im.getHead()
        src = tmpl.getHead()
        for f in (
            "version",
            "measurement_uid",
            "field_of_view",
            "position",
            "read_dir",
            "phase_dir",
            "slice_dir",
            "patient_table_position",
            "average",
            "slice",
            "contrast",
            "phase",
            "repetition",
            "set",
            "acquisition_time_stamp",
            "physiology_time_stamp",
        ):
            setattr(head, f, getattr(src, f))
        head.image_type = image_type
        head.image_index = k + 1
        head.image_series_index = series_index
        im.setHead(head)
        m = ismrmrd.Meta()
        for key, val in (meta or {}).items():
            m[key] = val
        im.attribute_string = m.serialize()
        out.append(im)
    return out
