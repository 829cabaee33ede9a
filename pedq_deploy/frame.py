"""The B0-aligned frame: resample a volume onto an isotropic grid whose z axis is the B0 direction.

The reconstruction network works in this frame, so it only ever meets one dipole kernel (B0 along
its z axis, isotropic voxels) whatever the head's tilt and the scan's voxel size; the runtime
rotates the local field in and chi back out. The networks run on an isotropic grid anyway, so the
rotation costs no extra interpolation: it replaces the plain zoom to the network's voxel size.

Physical coordinates here are millimetres along the voxel axes (``p = index * voxel_size``);
the B0 direction is a unit vector in that frame (see :func:`pedq_deploy.physics.b0_direction_from_affine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

from .errors import InputError

__all__ = ["B0Frame", "rotation_to_z", "mask_box"]


def rotation_to_z(b0) -> np.ndarray:
    """The smallest rotation ``R`` with ``R @ b0 = (0, 0, 1)`` (the sign of B0 does not matter)."""
    b = np.asarray(b0, np.float64)
    n = np.linalg.norm(b)
    if b.shape != (3,) or not np.isfinite(n) or n == 0:
        raise InputError(f"B0 direction must be a finite non-zero 3-vector, got {b0!r}")
    b = b / n
    if b[2] < 0:  # the dipole kernel depends on (k.b)^2: flip to the nearer pole
        b = -b
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(b, z)
    s2 = float(v @ v)
    if s2 < 1e-18:
        return np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx * ((1.0 - float(b @ z)) / s2)


def mask_box(mask: np.ndarray, voxel_size, margin_mm: float = 6.0) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin_mm`` on every side (clipped to the volume)."""
    if not mask.any():
        raise InputError("the brain mask is empty")
    box = []
    for ax in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))
        m = int(np.ceil(margin_mm / voxel_size[ax]))
        box.append(slice(max(int(idx[0]) - m, 0), min(int(idx[-1]) + 1 + m, mask.shape[ax])))
    return tuple(box)


@dataclass(frozen=True)
class B0Frame:
    """Grid geometry of one volume (or a box of it) in the B0-aligned frame.

    ``to_frame`` samples a volume of shape ``shape`` (voxel size ``voxel_size``) onto the frame's
    grid (``frame_shape``, isotropic ``frame_voxel`` mm); ``from_frame`` samples back. Points
    outside the source grid read ``cval``.
    """

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    rotation: np.ndarray  # frame coordinates = rotation @ voxel-frame coordinates (mm)
    frame_voxel: float
    frame_shape: tuple[int, int, int]
    origin: np.ndarray  # frame coordinates (mm) of frame voxel (0, 0, 0)

    @classmethod
    def build(cls, shape, voxel_size, b0, frame_voxel: float, box: tuple[slice, slice, slice] | None = None) -> B0Frame:
        """Frame of a ``shape`` grid; the frame's grid covers ``box`` (default: the whole volume)."""
        v = np.asarray(voxel_size, np.float64)
        if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise InputError(f"voxel sizes must be three positive numbers, got {voxel_size!r}")
        if not np.isfinite(frame_voxel) or frame_voxel <= 0:
            raise InputError(f"frame voxel size must be positive, got {frame_voxel!r}")
        box = box or tuple(slice(0, n) for n in shape)
        lo = np.array([s.start for s in box], np.float64)
        hi = np.array([s.stop - 1 for s in box], np.float64)
        corners = np.array([[(lo, hi)[(c >> a) & 1][a] for a in range(3)] for c in range(8)]) * v
        rot = rotation_to_z(b0)
        rc = corners @ rot.T
        origin = rc.min(axis=0)
        fshape = tuple(int(np.floor((rc.max(axis=0)[a] - origin[a]) / frame_voxel)) + 1 for a in range(3))
        return cls(tuple(int(n) for n in shape), tuple(float(x) for x in v), rot, float(frame_voxel), fshape, origin)

    @property
    def tilt_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip(self.rotation[2, 2], -1.0, 1.0))))

    def to_frame(self, volume: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        if tuple(volume.shape) != self.shape:
            raise InputError(f"volume shape {volume.shape} differs from the frame's source grid {self.shape}")
        # source index = diag(1/v) R^T (origin + t * frame index)
        m = (self.rotation.T * self.frame_voxel) / np.asarray(self.voxel_size)[:, None]
        off = (self.rotation.T @ self.origin) / np.asarray(self.voxel_size)
        return ndi.affine_transform(
            np.asarray(volume, np.float32),
            m,
            off,
            output_shape=self.frame_shape,
            order=order,
            mode="constant",
            cval=cval,
            prefilter=order > 1,
        )

    def from_frame(self, volume: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        if tuple(volume.shape) != self.frame_shape:
            raise InputError(f"volume shape {volume.shape} differs from the frame grid {self.frame_shape}")
        # frame index = (R diag(v) source index - origin) / t
        m = self.rotation * np.asarray(self.voxel_size)[None, :] / self.frame_voxel
        off = -self.origin / self.frame_voxel
        return ndi.affine_transform(
            np.asarray(volume, np.float32), m, off, output_shape=self.shape, order=order, mode="constant", cval=cval, prefilter=order > 1
        )
