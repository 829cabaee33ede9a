"""Geometry of the simulated pediatric head, painted layer by layer with partial-volume edges.

Coordinates are mm in the voxel frame, centred on the grid: x left->right, y posterior->anterior,
z inferior->superior (the head is upright in the image; the tilt to B0 lives in the affine).
Shapes are painted in order, later ones over earlier ones, each with a soft edge about one
voxel wide, so tissue boundaries are partial-volumed as in a real acquisition (and a 9 ppm air
step does not ring through the k-space forward model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .tissues import TISSUES

__all__ = ["HeadVolumes", "build_head", "LABEL_IDS", "DGM_LABELS", "BRAIN_LABELS"]

# internal tissue labels
LABEL_IDS = {
    "air": 0,
    "skin": 1,
    "fat": 2,
    "muscle": 3,
    "bone": 4,
    "dura": 5,
    "csf": 6,
    "ventricle": 7,
    "gm": 8,
    "wm": 9,
    "vein": 10,
    "sinus": 11,
    "cord": 12,
    "sulcus": 13,  # CSF inside the brain's envelope (sulci, fissures): part of the brain mask, as a brain extraction keeps it
    "thalamus_l": 20,
    "caudate_l": 21,
    "putamen_l": 22,
    "pallidum_l": 23,
    "thalamus_r": 24,
    "caudate_r": 25,
    "putamen_r": 26,
    "pallidum_r": 27,
}
# FreeSurfer / FSL FIRST numbers of the deep grey matter structures
DGM_LABELS = {
    "thalamus_l": 10,
    "caudate_l": 11,
    "putamen_l": 12,
    "pallidum_l": 13,
    "thalamus_r": 49,
    "caudate_r": 50,
    "putamen_r": 51,
    "pallidum_r": 52,
}
BRAIN_LABELS = ("gm", "wm", "ventricle", "sulcus", "vein") + tuple(DGM_LABELS)


@dataclass
class HeadVolumes:
    chi: np.ndarray  # ppm relative to water
    pd: np.ndarray
    r2s: np.ndarray  # 1/ms
    fat: np.ndarray  # fat fraction
    label: np.ndarray  # internal tissue labels
    head_center: np.ndarray
    head_radii: np.ndarray


class _Painter:
    def __init__(self, shape, voxel_size, age_index: int, tissues=None):
        self.shape = tuple(shape)
        self.v = np.asarray(voxel_size, np.float64)
        self.age = age_index
        self.edge = float(self.v.max())
        self.tissues = TISSUES if tissues is None else tissues
        self.chi = np.full(self.shape, self.tissues["air"][age_index].chi, np.float32)
        self.pd = np.zeros(self.shape, np.float32)
        self.r2s = np.full(self.shape, 1.0, np.float32)
        self.fat = np.zeros(self.shape, np.float32)
        self.label = np.zeros(self.shape, np.uint8)
        self.center_idx = (np.asarray(self.shape) - 1) / 2.0

    def _box(self, lo_mm, hi_mm):
        lo = np.floor(np.asarray(lo_mm) / self.v + self.center_idx).astype(int)
        hi = np.ceil(np.asarray(hi_mm) / self.v + self.center_idx).astype(int) + 1
        lo = np.clip(lo, 0, self.shape)
        hi = np.clip(hi, 0, self.shape)
        if np.any(hi <= lo):
            return None, None
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        grids = [((np.arange(a, b) - c) * vi).astype(np.float32) for a, b, c, vi in zip(lo, hi, self.center_idx, self.v)]
        return sl, (grids[0][:, None, None], grids[1][None, :, None], grids[2][None, None, :])

    def paint(self, sl, occ, tissue: str, label: str, only: tuple[str, ...] | None = None):
        if sl is None:
            return
        t = self.tissues[tissue][self.age]
        a = occ.astype(np.float32)
        if only is not None:
            allowed = np.isin(self.label[sl], [LABEL_IDS[o] for o in only])
            a = a * allowed
        for arr, val in ((self.chi, t.chi), (self.pd, t.pd), (self.r2s, 1.0 / t.t2s_ms), (self.fat, float(tissue == "fat"))):
            view = arr[sl]
            view += a * (np.float32(val) - view)
        lab = self.label[sl]
        lab[a >= 0.5] = LABEL_IDS[label]

    def _soft(self, signed_distance):
        return np.clip(0.5 - signed_distance / self.edge, 0.0, 1.0)

    def ellipsoid(self, center, radii, tissue, label, *, rot=None, deform=None, only=None):
        c = np.asarray(center, np.float64)
        r = np.asarray(radii, np.float64)
        ext = r.max() * (1.3 if deform is not None else 1.05) + 2 * self.edge
        sl, (x, y, z) = self._box(c - ext, c + ext)
        if sl is None:
            return
        x, y, z = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
        if rot is not None:
            m = np.asarray(rot, np.float32)  # rows: local axes in the voxel frame
            x, y, z = (
                m[0, 0] * x + m[0, 1] * y + m[0, 2] * z,
                m[1, 0] * x + m[1, 1] * y + m[1, 2] * z,
                m[2, 0] * x + m[2, 1] * y + m[2, 2] * z,
            )
        u = (x / np.float32(r[0]), y / np.float32(r[1]), z / np.float32(r[2]))
        f = np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2) + np.float32(1e-6)
        if deform is not None:
            f = f / (1.0 + deform(u[0] / f, u[1] / f, u[2] / f))
        dist = np.sqrt(x**2 + y**2 + z**2)
        sd = (f - 1.0) * dist / f  # distance to the surface along the ray from the centre
        self.paint(sl, self._soft(sd), tissue, label, only)

    def tube(self, points, radius, tissue, label, *, only=None):
        p = np.asarray(points, np.float64)
        lo = p.min(axis=0) - radius - 2 * self.edge
        hi = p.max(axis=0) + radius + 2 * self.edge
        sl, (x, y, z) = self._box(lo, hi)
        if sl is None:
            return
        d2 = None
        for a, b in zip(p[:-1], p[1:]):
            ab = b - a
            L2 = float(ab @ ab) or 1e-9
            t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / np.float32(L2)
            t = np.clip(t, 0.0, 1.0)
            dd = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
            d2 = dd if d2 is None else np.minimum(d2, dd)
        self.paint(sl, self._soft(np.sqrt(d2) - radius), tissue, label, only)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _wave_sum(ux, uy, uz, k, f, ph, scale, out):  # pragma: no cover - compiled
    # 1-D views only: ndarray.ravel() inside a Numba kernel may copy, and writes would be lost
    for i in numba.prange(out.size):
        acc = 0.0
        for w in range(k.shape[0]):
            acc += np.cos(f[w] * (k[w, 0] * ux[i] + k[w, 1] * uy[i] + k[w, 2] * uz[i]) + ph[w])
        out[i] = acc * scale


def _random_sphere_field(rng, n_waves: int, freq: tuple[float, float], amp: float):
    """A random smooth function on the unit sphere: a sum of plane waves in the direction u."""
    k = rng.normal(size=(n_waves, 3))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    f = rng.uniform(*freq, size=n_waves)
    ph = rng.uniform(0, 2 * np.pi, size=n_waves)
    scale = np.float32(amp / np.sqrt(n_waves / 2.0))
    k32, f32, ph32 = k.astype(np.float32), f.astype(np.float32), ph.astype(np.float32)

    def field(ux, uy, uz):
        ux, uy, uz = (np.ascontiguousarray(a, np.float32) for a in np.broadcast_arrays(ux, uy, uz))
        out = np.empty(ux.shape, np.float32)
        _wave_sum(ux.reshape(-1), uy.reshape(-1), uz.reshape(-1), k32, f32, ph32, scale, out.reshape(-1))
        return out

    return field


def _rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])


def paint_airways(P: _Painter, face_c, hc, head, sin_r: float, fit: float, bottom: float, *, ear_z=(-0.42, -0.40), only=None) -> None:
    """Air in the face and neck: the paranasal sinuses, the ear canals and the airway down to the
    field of view's ``bottom``, placed by the face's centre and the head's centre and semi-axes.
    ``only``: the tissues air may replace (ear canals also cross dura and CSF); None: any."""
    ears = None if only is None else (*only, "dura", "csf")
    for s in (-1, 1):
        P.ellipsoid(
            face_c + np.array([s * 0.30 * head[0], 0.15 * head[1], 0.10 * head[2]]),
            [sin_r, 1.2 * sin_r, 1.3 * sin_r],
            "air",
            "air",
            only=only,
        )
        P.tube(
            [
                hc + np.array([s * 1.02 * head[0], -0.05 * head[1], ear_z[0] * head[2]]),
                hc + np.array([s * 0.80 * head[0], -0.05 * head[1], ear_z[1] * head[2]]),
            ],
            3.0 * fit,
            "air",
            "air",
            only=ears,
        )
    nose = [
        face_c + np.array([0.0, 0.55 * head[1], 0.2 * head[2]]),
        face_c + np.array([0.0, 0.1 * head[1], -0.1 * head[2]]),
        np.array([hc[0], hc[1] + 0.12 * head[1], bottom]),
    ]
    P.tube(nose, 4.5 * fit, "air", "air", only=only)


def build_head(rng: np.random.Generator, shape, voxel_size, age: str, anatomy_voxel_size=None, tissues=None) -> HeadVolumes:
    """Paint one random head. All randomness comes from ``rng`` in a fixed order.

    ``anatomy_voxel_size`` (default ``voxel_size``) is the grid the anatomy is designed for: the
    few sizes tied to the voxel (a fissure at least a voxel wide, the head's margin to the field of
    view) follow it, so a head painted on a finer grid of the same field of view (the simulator's
    supersampled forward model) is the same head, only with sharper edges.
    """
    ai = 0 if age == "neonate" else 1
    pv = np.asarray(voxel_size, np.float64)
    v = pv if anatomy_voxel_size is None else np.asarray(anatomy_voxel_size, np.float64)
    fov = np.asarray(shape) * pv
    P = _Painter(shape, pv, ai, tissues)
    j = lambda lo, hi, size=None: rng.uniform(lo, hi, size)  # noqa: E731

    # --- head size and layers (mm) -------------------------------------------------------
    head = np.array([56.0, 66.0, 58.0]) if ai == 0 else np.array([70.0, 84.0, 72.0])
    head *= j(0.92, 1.08) * j(0.96, 1.04, 3)
    skin, fatw = (1.2, 2.0) if ai == 0 else (1.5, 3.0)
    skull = j(1.2, 1.8) if ai == 0 else j(2.0, 3.0)
    dura = 0.5
    csfw = j(2.0, 3.2) if ai == 0 else j(2.8, 4.2)
    layers = skin + fatw + skull + dura + csfw
    # small grids (tests): shrink the whole head so that it fits the field of view
    fit = min(1.0, float(np.min((fov / 2.0 - 2.0 * v.max()) / head)))
    head *= fit
    skin, fatw, skull, dura, csfw = (w * fit for w in (skin, fatw, skull, dura, csfw))
    layers *= fit
    hc = np.array([j(-2, 2) * fit, j(-3, 3) * fit, min(0.0, fov[2] / 2.0 - head[2] - 2.0 * v.max())])
    brain = head - layers
    bc = hc + np.array([0.0, 0.0, -0.02 * brain[2]])
    R = brain

    # --- neck, face, scalp, skull --------------------------------------------------------
    neck_r = 0.62 * head[0]
    bottom = -fov[2] / 2.0 - 5.0
    P.tube([[hc[0], hc[1] - 0.1 * head[1], bottom], [hc[0], hc[1] - 0.1 * head[1], hc[2] - 0.3 * head[2]]], neck_r, "muscle", "muscle")
    face_c = hc + np.array([0.0, 0.5 * head[1], -0.62 * head[2]])
    P.ellipsoid(face_c, [0.62 * head[0], 0.45 * head[1], 0.36 * head[2]], "muscle", "muscle")
    shape_def = _random_sphere_field(rng, 6, (1.0, 2.5), 0.025)
    P.ellipsoid(hc, head, "skin", "skin", deform=shape_def)
    P.ellipsoid(hc, head - skin, "fat", "fat", deform=shape_def)
    P.ellipsoid(hc, head - skin - fatw, "bone", "bone", deform=shape_def)
    P.ellipsoid(hc, head - skin - fatw - skull, "dura", "dura", deform=shape_def)
    P.ellipsoid(hc, head - skin - fatw - skull - dura, "csf", "csf", deform=shape_def)
    # anterior fontanelle: open in neonates, closing in infants; scalp meets the dura there
    fz = (j(9, 14), j(11, 16)) if ai == 0 else (j(3, 6), j(4, 7))
    top = hc + np.array([0.0, 0.22 * head[1], 0.0])
    top[2] = hc[2] + 0.96 * head[2] * np.sqrt(max(1.0 - 0.22**2, 0.0))
    P.ellipsoid(top, [fz[0] * fit, fz[1] * fit, 8.0 * fit], "dura", "dura", only=("bone",))

    # --- dural venous sinuses (outside the brain mask) ------------------------------------
    inner = head - skin - fatw - skull - dura
    torcular = hc + np.array([0.0, -0.90 * inner[1], -0.22 * inner[2]])
    ang = np.linspace(np.deg2rad(-100), np.deg2rad(60), 9)
    sss = [hc + np.array([0.0, 0.93 * inner[1] * np.sin(a), 0.93 * inner[2] * np.cos(a)]) for a in ang]
    sss[0] = torcular
    vr = (2.2 if ai == 0 else 2.8) * fit
    P.tube(sss, vr, "vein", "sinus")
    for s in (-1, 1):
        P.tube(
            [
                torcular,
                hc + np.array([s * 0.55 * inner[0], -0.78 * inner[1], -0.30 * inner[2]]),
                hc + np.array([s * 0.82 * inner[0], -0.45 * inner[1], -0.40 * inner[2]]),
            ],
            0.9 * vr,
            "vein",
            "sinus",
        )

    # --- brain ----------------------------------------------------------------------------
    low = _random_sphere_field(rng, 8, (1.0, 3.0), 0.03)
    gyri = _random_sphere_field(rng, 24, (14.0, 22.0), 0.035 if ai == 0 else 0.045)
    brain_def = lambda ux, uy, uz: low(ux, uy, uz) + gyri(ux, uy, uz)  # noqa: E731
    cer_c = bc + np.array([0.0, 0.02 * R[1], 0.10 * R[2]])
    cer_r = np.array([R[0], R[1], 0.88 * R[2]])
    cortex = (j(2.2, 2.8) if ai == 0 else j(2.5, 3.1)) * fit
    P.ellipsoid(cer_c, cer_r, "gm", "gm", deform=brain_def, only=("csf",))
    P.ellipsoid(cer_c, cer_r - cortex, "wm", "wm", deform=brain_def, only=("gm",))
    # interhemispheric fissure
    P.ellipsoid(
        cer_c + np.array([0.0, 0.0, 0.45 * R[2]]), [0.7 * fit + 0.3 * v[0], 0.95 * R[1], 0.55 * R[2]], "csf", "csf", only=("gm", "wm")
    )
    # cerebellum and brainstem
    cb_c = bc + np.array([0.0, -0.55 * R[1], -0.62 * R[2]])
    cb_r = np.array([0.58 * R[0], 0.32 * R[1], 0.30 * R[2]])
    P.ellipsoid(cb_c, cb_r, "gm", "gm", deform=_random_sphere_field(rng, 16, (16.0, 24.0), 0.04), only=("csf", "dura"))
    P.ellipsoid(cb_c, 0.62 * cb_r, "wm", "wm", only=("gm", "wm"))
    stem = [
        bc + np.array([0.0, -0.12 * R[1], -0.05 * R[2]]),
        bc + np.array([0.0, -0.25 * R[1], -0.55 * R[2]]),
        bc + np.array([0.0, -0.30 * R[1], -0.98 * R[2]]),
    ]
    P.tube(stem, 0.15 * R[0], "wm", "wm")

    # --- ventricles -------------------------------------------------------------------------
    vs = j(0.75, 1.35)
    for s in (-1, 1):
        P.ellipsoid(
            bc + np.array([s * 0.13 * R[0], 0.04 * R[1], 0.14 * R[2]]),
            [0.055 * R[0] * vs, 0.44 * R[1], 0.11 * R[2] * vs],
            "csf",
            "ventricle",
            rot=_rot_z(s * j(4, 10)),
        )
    P.ellipsoid(bc + np.array([0.0, -0.08 * R[1], -0.04 * R[2]]), [0.8 * fit + 0.3 * v[0], 0.15 * R[1], 0.11 * R[2]], "csf", "ventricle")

    # --- deep grey matter (left is -x in RAS) ---------------------------------------------
    dgm = {
        "thalamus": ((0.14, -0.14, -0.02), (0.11, 0.17, 0.14)),
        "caudate": ((0.24, 0.20, 0.12), (0.06, 0.16, 0.10)),
        "putamen": ((0.42, 0.06, -0.02), (0.07, 0.22, 0.14)),
        "pallidum": ((0.32, 0.02, -0.05), (0.05, 0.12, 0.09)),
    }
    for name, (pos, rad) in dgm.items():
        size = j(0.85, 1.15)
        for s, side in ((-1, "l"), (1, "r")):
            c = bc + np.array([s * pos[0] * R[0], pos[1] * R[1], pos[2] * R[2]]) + j(-1.5, 1.5, 3) * fit
            P.ellipsoid(c, np.array(rad) * R * size * j(0.93, 1.07, 3), name, f"{name}_{side}", rot=_rot_z(s * j(-8, 8)))

    # --- deep veins: internal cerebral veins, vein of Galen, straight sinus -----------------
    icv_r = (0.9 if ai == 0 else 1.1) * fit
    galen = bc + np.array([0.0, -0.36 * R[1], 0.08 * R[2]])
    for s in (-1, 1):
        P.tube(
            [bc + np.array([s * 1.6 * fit, 0.12 * R[1], 0.15 * R[2]]), bc + np.array([s * 1.4 * fit, -0.20 * R[1], 0.13 * R[2]]), galen],
            icv_r,
            "vein",
            "vein",
        )
    P.tube([galen, galen + np.array([0.0, -0.12 * R[1], 0.05 * R[2]])], 1.4 * icv_r, "vein", "vein")
    P.tube([galen + np.array([0.0, -0.12 * R[1], 0.05 * R[2]]), torcular], vr * 0.8, "vein", "sinus")

    # --- spinal canal, airways, paranasal sinuses, ear canals -------------------------------
    fm = stem[-1]
    canal = [fm, np.array([fm[0], fm[1] - 2.0, bottom])]
    P.tube(canal, 0.15 * R[0] + 3.5 * fit, "bone", "bone", only=("muscle",))
    P.tube(canal, 0.15 * R[0] + 1.8 * fit, "csf", "csf", only=("muscle", "bone", "csf", "dura"))
    P.tube([fm, canal[1]], 0.09 * R[0], "wm", "cord")
    sin_r = (j(3.0, 4.5) if ai == 0 else j(6.0, 8.5)) * fit
    paint_airways(P, face_c, hc, head, sin_r, fit, bottom, only=("air", "muscle", "fat", "skin", "bone"))

    return HeadVolumes(P.chi, P.pd, P.r2s, P.fat, P.label, hc, head)
