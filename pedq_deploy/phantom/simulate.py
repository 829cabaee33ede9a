"""From the painted head to a GRE acquisition: field, phase, magnitude, noise, geometry."""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from ..errors import InputError
from ..physics import GAMMA_MHZ_PER_T, check_voxel_size, forward_field, ppm_to_phase
from .head import BRAIN_LABELS, DGM_LABELS, LABEL_IDS, build_head
from .tissues import AGES, CHI_AIR, FAT_SHIFT_PPM, scaled_tissues

__all__ = ["Subject", "make_subject", "write_subject", "write_bids", "tilt_affine", "supersample_factors", "SOURCE_PROTOCOL"]

ANATOMIES = ("procedural", "icbm", "cvs")
SOURCE_PROTOCOL = dict(shape=(256, 256, 80), voxel_size=(0.78, 0.78, 2.0), echo_time=4.92e-3, field_strength=3.0)


@dataclass
class Subject:
    """One simulated scan and its truth. Arrays share the grid described by ``affine``."""

    magnitude: np.ndarray  # (X, Y, Z), or (X, Y, Z, echoes) for several echo times
    phase: np.ndarray  # radians, or Siemens integers when phase_format == "siemens"; shaped as magnitude
    chi: np.ndarray  # ppm, referenced to the mean over the brain mask, zero outside
    local_field: np.ndarray  # ppm, the field of chi inside the brain mask
    total_field: np.ndarray  # ppm, the field of all sources (air, bone, tissue)
    brain_mask: np.ndarray
    labels: np.ndarray  # FreeSurfer numbers of the 8 deep grey matter structures
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    echo_time: float | tuple[float, ...]  # seconds; a tuple for several echoes
    field_strength: float
    b0_direction: np.ndarray  # voxel frame
    params: dict = field(default_factory=dict)


def tilt_affine(shape, voxel_size, tilt_deg: float, axis_angle_deg: float) -> np.ndarray:
    """Affine of a grid whose head is tilted by ``tilt_deg`` from B0 (world z) about a horizontal axis."""
    a = np.deg2rad(axis_angle_deg)
    u = np.array([np.cos(a), np.sin(a), 0.0])
    t = np.deg2rad(tilt_deg)
    K = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    rot = np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * (K @ K)
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(voxel_size)
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return aff


def supersample_factors(voxel_size, finest: float = 1.25, most: int = 2) -> tuple[int, int, int]:
    """Sub-voxels per axis so that no sub-voxel side exceeds ``finest`` mm (at most ``most`` per axis).

    0.78x0.78x2 mm (the source protocol) gives (1, 1, 2): the 2 mm slices are where point sources
    on the grid make the field rough; 1.2 mm isotropic (the training grid) gives (1, 1, 1).
    """
    v = check_voxel_size(voxel_size)
    return tuple(int(min(most, max(1, int(np.ceil(x / finest - 1e-9))))) for x in v)


def _check_factors(factors) -> tuple[int, int, int]:
    f = tuple(int(k) for k in np.asarray(factors).reshape(-1))
    if len(f) != 3 or min(f) < 1 or max(f) > 8:
        raise InputError(f"supersample must be three integers in 1..8, got {factors!r}")
    return f


def _upsample(a: np.ndarray, f) -> np.ndarray:
    for axis, k in enumerate(f):
        if k > 1:
            a = np.repeat(a, k, axis=axis)
    return a


def _block_mean(a: np.ndarray, f) -> np.ndarray:
    if tuple(f) == (1, 1, 1):
        return a
    n = [s // k for s, k in zip(a.shape, f)]
    return a.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))


def _harmonics(x, y, z):
    """Spherical harmonics up to second order (the terms of a 2nd-order shim), unnormalised."""
    return [np.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y]


def _shim_terms(shape, voxel_size, factors, field, brain):
    """Least-squares fit of ``field`` over ``brain`` by the 2nd-order shim terms; returns a function
    giving the fitted field on the output grid or (``fine=True``) on the supersampled grid."""
    v = np.asarray(voxel_size, np.float64)
    c = (np.asarray(shape) - 1) / 2.0
    idx = np.nonzero(brain)
    coords = [(i - ci) * vi / 100.0 for i, ci, vi in zip(idx, c, v)]  # dm: keeps the system well scaled
    a = np.stack(_harmonics(*coords), axis=1)
    coef, *_ = np.linalg.lstsq(a, field[idx].astype(np.float64), rcond=None)

    def evaluate(fine: bool = False) -> np.ndarray:
        f = factors if fine else (1, 1, 1)
        axes = [((np.arange(n * k) + 0.5) / k - 0.5 - ci) * vi / 100.0 for n, k, ci, vi in zip(shape, f, c, v)]
        x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
        return sum(ci * t for ci, t in zip(coef, _harmonics(x, y, z))).astype(np.float32)

    return evaluate


def _coil_shading(rng, shape, voxel_size, head_center, head_radii, brain):
    v = np.asarray(voxel_size)
    c = (np.asarray(shape) - 1) / 2.0
    # evaluated on a coarse grid and interpolated: the sensitivity is smooth
    step = np.maximum(1, np.round(8.0 / v)).astype(int)
    coarse = [np.arange(0, n, s) for n, s in zip(shape, step)]
    X, Y, Z = np.meshgrid(*[(g - ci) * vi for g, ci, vi in zip(coarse, c, v)], indexing="ij")
    n_coils = 8
    phi0 = rng.uniform(0, 2 * np.pi)
    zc = head_center[2] + rng.uniform(-0.2, 0.3) * head_radii[2]
    sos = np.zeros_like(X)
    sigma = 0.75 * head_radii[0]
    for k in range(n_coils):
        p = head_center + np.array(
            [
                1.25 * head_radii[0] * np.cos(phi0 + 2 * np.pi * k / n_coils),
                1.25 * head_radii[1] * np.sin(phi0 + 2 * np.pi * k / n_coils),
                zc - head_center[2],
            ]
        )
        gain = rng.uniform(0.8, 1.2)
        sos += (gain * np.exp(-((X - p[0]) ** 2 + (Y - p[1]) ** 2 + (Z - p[2]) ** 2) / (2 * sigma**2))) ** 2
    sens = np.sqrt(sos)
    zoom = [n / len(g) for n, g in zip(shape, coarse)]
    sens = ndi.zoom(sens, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    sens = np.pad(sens, [(0, max(0, n - s)) for n, s in zip(shape, sens.shape)], mode="edge")
    sens = sens / np.median(sens[brain])
    # compress to the tens of percent seen with head arrays
    return (0.5 + 0.5 * np.clip(sens, 0.2, 3.0) ** 0.8).astype(np.float32)


def make_subject(
    seed: int = 0,
    age: str = "neonate",
    shape=SOURCE_PROTOCOL["shape"],
    voxel_size=SOURCE_PROTOCOL["voxel_size"],
    tilt_deg: float | None = None,
    echo_time: float = SOURCE_PROTOCOL["echo_time"],
    field_strength: float = SOURCE_PROTOCOL["field_strength"],
    snr: float = 100.0,
    phase_format: str = "radians",
    supersample: tuple[int, int, int] | None = None,
    anatomy: str = "procedural",
    tissue_factors: dict[str, tuple[float, float]] | None = None,
) -> Subject:
    """Draw one random subject. The same arguments give the same subject, bit for bit.

    Parameters
    ----------
    seed : int
        Seeds every random choice (anatomy, values, tilt when not given, coils, noise).
    age : "neonate" or "infant"
    tilt_deg : float, optional
        Angle between B0 and the head's superior axis; default uniform in [0, 30] degrees.
    echo_time : float or sequence of floats
        Seconds. Several echo times give a multi-echo scan of the same head: ``magnitude`` and
        ``phase`` are then (X, Y, Z, echoes), with independent noise at each echo.
    snr : float
        Mean brain magnitude (of the first echo) over the noise standard deviation (per channel);
        ``inf`` for none.
    phase_format : "radians" or "siemens" (integers -4096..4095)
    supersample : 3 ints, optional
        Sub-voxels per voxel along each axis for the background field and the signal (computed on
        the finer grid, the complex signal averaged down); default :func:`supersample_factors`.
    anatomy : "procedural", "icbm" or "cvs"
        The brain: the procedural phantom's (:mod:`.head`), or a real brain template warped at
        random (:mod:`.anatomy`; needs the ``anatomy`` extra).
    tissue_factors : dict, optional
        Tissue name -> (proton density factor, T2* factor): a magnitude contrast other than the
        age's (:func:`.tissues.scaled_tissues`); susceptibility is unchanged.
    """
    if age not in AGES:
        raise InputError(f"age must be one of {AGES}, got {age!r}")
    if anatomy not in ANATOMIES:
        raise InputError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if phase_format not in ("radians", "siemens"):
        raise InputError(f"phase format must be radians or siemens, got {phase_format!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"phantom shape must be three sizes of at least 8, got {shape}")
    v = check_voxel_size(voxel_size)
    multi = np.ndim(echo_time) > 0
    tes = tuple(float(t) for t in np.atleast_1d(echo_time))
    if not (tes and all(t > 0 for t in tes) and field_strength > 0 and snr > 0):
        raise InputError("echo time, field strength and SNR must be positive")
    rng = np.random.default_rng(seed)
    tilt = float(rng.uniform(0.0, 30.0)) if tilt_deg is None else float(tilt_deg)
    axis_angle = float(rng.uniform(0.0, 360.0))
    f = supersample_factors(v) if supersample is None else _check_factors(supersample)
    fine = tuple(n * k for n, k in zip(shape, f))
    fv = v / np.asarray(f, np.float64)
    # the same head twice: on the output grid (truth: labels, brain mask, chi) and on the fine grid
    # (background field and signal); both paintings draw the same random numbers in the same order
    rng_fine = copy.deepcopy(rng)
    if anatomy == "procedural":
        builder = build_head
    else:
        from .anatomy import build_anatomy_head

        builder = functools.partial(build_anatomy_head, template=anatomy)
    tissues = scaled_tissues(tissue_factors)
    head = builder(rng, shape, v, age, tissues=tissues)
    head_f = head if fine == shape else builder(rng_fine, fine, fv, age, anatomy_voxel_size=v, tissues=tissues)

    labels_int = head.label
    brain = np.isin(labels_int, [LABEL_IDS[n] for n in BRAIN_LABELS])
    brain = ndi.binary_fill_holes(brain)
    # keep the brain proper: the largest component (drops isolated partial-volume specks)
    lab, n = ndi.label(brain)
    if n > 1:
        brain = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)

    affine = tilt_affine(shape, v, tilt, axis_angle)
    b0 = np.linalg.solve(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0), [0.0, 0.0, 1.0])
    b0 /= np.linalg.norm(b0)

    # The background field is computed on the fine grid and the complex signal is averaged down to
    # the voxel, as an acquisition integrates it: that gives the signal loss of through-voxel
    # dephasing next to air and bone at long echo times, and a field less rough next to its sources
    # than point sources on 2 mm slices make. (Measured on the source-protocol neonate: without shim,
    # V-SHARP left a residual background 2.5x the local field on the plain grid, 1.0x supersampled;
    # with the shim below, 0.97x and 0.94x: the shim is what real scans have, and it matters most.)
    # The background sources are relative to the air that surrounds the head (zero padding = air):
    # everything outside the brain, and the brain's uniform mean, through the image-space dipole
    # kernel (a k-space kernel applied to voxelised 9 ppm air/bone steps rings, and with finite
    # padding adds a non-harmonic ripple inside the brain as large as a neonate's whole local
    # field). The brain's own sources go through the k-space kernel on the output grid: that is the
    # forward model the truth local field and the inversions are defined by.
    brain_mean = float(head.chi[brain].mean())
    chi = np.where(brain, head.chi - brain_mean, 0.0).astype(np.float32)
    local_all = forward_field(chi, v, b0, pad_factor=2.0)
    local = (local_all * brain).astype(np.float32)
    background_sources = (np.where(_upsample(brain, f), brain_mean, head_f.chi) - np.float32(CHI_AIR)).astype(np.float32)
    field_f = forward_field(background_sources, fv, b0, pad_factor=2.0, kernel="image")
    del background_sources
    field_f += _upsample(local_all, f)
    # the scanner's shim: the field's best fit by spherical harmonics up to second order over the
    # brain is taken out (harmonic, so the local field is unchanged), as a 2nd-order shim does; an
    # unshimmed head sits a whole ppm off resonance, which real scans do not
    shim = _shim_terms(shape, v, f, _block_mean(field_f, f), brain)
    field_f -= shim(fine=True)
    total = _block_mean(field_f, f).astype(np.float32)

    shading = _coil_shading(rng, shape, v, head.head_center, head.head_radii, brain)
    phi0 = rng.uniform(-np.pi, np.pi)
    grad = rng.normal(0, 0.004, 3)  # rad/mm receiver phase ramp (harmonic: removed by V-SHARP)
    c = (np.asarray(shape) - 1) / 2.0
    ramp = sum(
        g * ((np.arange(n) - ci) * vi).reshape([-1 if a == i else 1 for i in range(3)])
        for a, (g, n, ci, vi) in enumerate(zip(grad, shape, c, v))
    )
    phase_offset = np.float32(phi0) + ramp.astype(np.float32)
    signals = []
    for te in tes:  # the same head and field at every echo; T2* decay, field and fat shift grow with TE
        fat_phase = 2 * np.pi * GAMMA_MHZ_PER_T * field_strength * FAT_SHIFT_PPM * te  # rad
        mag_f = head_f.pd * np.exp(-te * 1e3 * head_f.r2s)
        sig = _block_mean(
            mag_f * ((1 - head_f.fat) + head_f.fat * np.exp(1j * fat_phase)) * np.exp(1j * ppm_to_phase(field_f, te, field_strength)), f
        )
        signals.append((sig * shading * np.exp(1j * phase_offset)).astype(np.complex64))
    del mag_f, field_f
    # SNR is that of the first echo; thermal noise is the same at every echo
    sigma = float(np.abs(signals[0])[brain].mean()) / snr if np.isfinite(snr) else 0.0
    if sigma > 0:
        signals = [sig + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) for sig in signals]
    signal = np.stack(signals, axis=-1) if multi else signals[0]
    magnitude = np.abs(signal).astype(np.float32)
    phase = np.angle(signal).astype(np.float32)
    if phase_format == "siemens":
        phase = np.clip(np.round(phase / np.pi * 4096.0), -4096, 4095).astype(np.int16)

    fs_labels = np.zeros(shape, np.uint8)
    for name, number in DGM_LABELS.items():
        fs_labels[labels_int == LABEL_IDS[name]] = number
    fs_labels[~brain] = 0

    params = dict(
        seed=int(seed),
        anatomy=anatomy,
        age=age,
        shape=list(shape),
        voxel_size=[float(x) for x in v],
        tilt_deg=tilt,
        tilt_axis_angle_deg=axis_angle,
        echo_time=list(tes) if multi else tes[0],
        field_strength=field_strength,
        snr=float(snr),
        phase_format=phase_format,
        receiver_phase_offset_rad=float(phi0),
        receiver_phase_ramp_rad_per_mm=[float(g) for g in grad],
        noise_sigma=sigma,
        supersample=list(f),
        b0_direction_voxel_frame=[float(x) for x in b0],
        chi_reference="mean over brain_mask",
        tissue_chi_ppm={
            k: float(head.chi[labels_int == LABEL_IDS[k]].mean()) if np.any(labels_int == LABEL_IDS[k]) else None
            for k in ("wm", "gm", *DGM_LABELS)
        },
    )
    return Subject(
        magnitude,
        phase,
        chi,
        local,
        total,
        brain,
        fs_labels,
        affine,
        tuple(float(x) for x in v),
        tes if multi else tes[0],
        field_strength,
        b0,
        params,
    )


def write_subject(subject: Subject, outdir: str | Path) -> list[str]:
    """Write a subject as a scan (magnitude, phase + BIDS sidecars) and its truth, atomically."""
    from ..io import StagedOutput, save_image

    names = []
    side = {
        "EchoTime": subject.echo_time,
        "MagneticFieldStrength": subject.field_strength,
        "Manufacturer": "pedq-deploy phantom",
        "ImageType": None,
    }
    with StagedOutput(outdir) as out:
        save_image(out.path("magnitude.nii.gz"), subject.magnitude, subject.affine)
        phase_dtype = np.int16 if subject.params.get("phase_format") == "siemens" else np.float32
        save_image(out.path("phase.nii.gz"), subject.phase, subject.affine, dtype=phase_dtype)
        for part, itype in (("magnitude", ["ORIGINAL", "PRIMARY", "M"]), ("phase", ["ORIGINAL", "PRIMARY", "P"])):
            out.path(f"{part}.json").write_text(json.dumps({**side, "ImageType": itype}, indent=2))
        save_image(out.path("chi.nii.gz"), subject.chi, subject.affine)
        save_image(out.path("local_field.nii.gz"), subject.local_field, subject.affine)
        save_image(out.path("brain_mask.nii.gz"), subject.brain_mask, subject.affine, dtype=np.uint8)
        save_image(out.path("labels.nii.gz"), subject.labels, subject.affine, dtype=np.uint8)
        out.path("phantom.json").write_text(json.dumps(subject.params, indent=2))
        names = out.names
    return names


def write_bids(
    subject: Subject,
    root: str | Path,
    sub: str,
    ses: str | None = None,
    *,
    acq: str | None = None,
    run: int | None = None,
    parts: tuple[str, ...] = ("mag", "phase"),
) -> list[Path]:
    """Write a subject into a BIDS dataset as a raw GRE run: ``_T2starw`` for one echo, ``_MEGRE`` with
    ``echo-N`` for several, ``part-mag`` / ``part-phase``, each with its JSON sidecar (EchoTime in s,
    MagneticFieldStrength in T). ``parts`` leaves a part out (a run with a missing phase, for tests).
    Creates ``dataset_description.json`` when the dataset has none. Returns the image paths."""
    from ..io import save_image
    from ..io.bids import BIDS_VERSION, write_json_atomic

    root = Path(root)
    if not (root / "dataset_description.json").is_file():
        write_json_atomic(
            root / "dataset_description.json",
            {
                "Name": "pedq-deploy phantom study",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "pedq-deploy phantom"}],
            },
        )
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    tes = list(np.atleast_1d(subject.echo_time))
    multi = len(tes) > 1
    stem = "_".join([f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ([f"acq-{acq}"] if acq else []) + ([f"run-{run}"] if run else []))
    written = []
    for e, te in enumerate(tes):
        for part in parts:
            name = stem + (f"_echo-{e + 1}" if multi else "") + f"_part-{part}_" + ("MEGRE" if multi else "T2starw")
            data = subject.magnitude if part == "mag" else subject.phase
            data = data[..., e] if multi else data
            dtype = np.int16 if (part == "phase" and subject.params.get("phase_format") == "siemens") else np.float32
            save_image(folder / f"{name}.nii.gz", data, subject.affine, dtype=dtype)
            write_json_atomic(
                folder / f"{name}.json",
                {
                    "EchoTime": float(te),
                    "MagneticFieldStrength": subject.field_strength,
                    "Manufacturer": "pedq-deploy phantom",
                    "EchoNumber": e + 1,
                    "ImageType": ["ORIGINAL", "PRIMARY", "M" if part == "mag" else "P"],
                },
            )
            written.append(folder / f"{name}.nii.gz")
    return written
