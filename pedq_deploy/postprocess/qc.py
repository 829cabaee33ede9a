"""Quality control of a reconstruction: how well chi explains the measured local field.

The map is the per-voxel term of PedQ-NET's model loss,
``q = |W m (exp(i k D*chi) - exp(i k y))|`` (``y`` the local field in ppm, ``k`` radians per ppm at
the echo time, ``W`` the magnitude weight, ``m`` the V-SHARP-eroded mask). Its summary is expressed
in units of the noise: for each voxel the misfit ``|D*chi - y|`` over the field noise that the
magnitude predicts there, ``sigma_noise / sensitivity`` (one echo: ``sensitivity = |s| k``), so
``misfit_noise_ratio`` is about 1 where chi explains the field down to the noise, below 1 where
it fits the noise too, and above 1 where the dipole model does not hold: a wrong B0 direction, a
mask that takes in non-brain, motion between echoes, or residual background field.

``chi`` is referenced to its mean, which is arbitrary: the mean is fitted back before comparing
(``D*m`` is not zero for a non-spherical mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft
import scipy.ndimage as ndi

from ..errors import InputError
from ..inversion._crop import crop_to_mask
from ..physics import check_direction, check_voxel_size, dipole_kernel_rfft, fft_workers

__all__ = ["consistency", "estimate_noise_sigma", "b0_direction_check", "QC_THRESHOLDS"]

# flags (see consistency()): set on held-out phantoms with right and wrong parameters, benchmarks/bench_qc.py
QC_THRESHOLDS = {
    "misfit_noise_ratio": 3.0,
    "misfit_fraction_above_3": 0.5,
    "coverage": 0.6,
    "b0_cone_energy_ratio": 2.5,
    "b0_angle_deg": 15.0,
    "single_echo_fraction": 0.10,
}


def _fibonacci_cap(centre: np.ndarray, max_deg: float, spacing_deg: float) -> np.ndarray:
    """Unit vectors about evenly spread over the cap of ``max_deg`` around ``centre``."""
    n_sphere = int(4 * np.pi / np.deg2rad(spacing_deg) ** 2)
    i = np.arange(n_sphere) + 0.5
    polar = np.arccos(1 - 2 * i / n_sphere)
    azim = np.pi * (1 + 5**0.5) * i
    d = np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)], axis=1)
    d = np.concatenate([d, -d])  # B0 and -B0 give the same kernel: keep the hemisphere near centre
    keep = d @ centre >= np.cos(np.deg2rad(max_deg))
    return np.concatenate([centre[None], d[keep]])


def b0_direction_check(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_direction: Sequence[float],
    *,
    max_deg: float = 40.0,
    spacing_deg: float = 4.0,
    cone_width: float = 0.1,
    max_points: int = 150_000,
) -> dict:
    """Which B0 direction the local field itself points to.

    A dipole field has almost no energy on its kernel's zero cone (``|k.b|^2 / |k|^2 = 1/3``), so the
    direction whose cone holds the least of the field's spectral energy (within ``max_deg`` of the
    given one) is the field's own B0. Returns its angle to the given direction and the cone energy
    at the given direction over the least (1 = the given direction is the best). It needs a strong,
    clean local field: on phantoms it found B0 within 3-13 degrees for some infants, but masking,
    residual background and noise also put energy on cones (ratios up to 1.75 with the right B0),
    and for neonates it cannot tell; hence the flag's high bar (``QC_THRESHOLDS``,
    ``benchmarks/bench_qc.py``).
    """
    m = np.asarray(mask, bool)
    v = check_voxel_size(voxel_size)
    b = check_direction(b0_direction)
    box = crop_to_mask(m)
    power = np.abs(scipy.fft.rfftn(box.embed(np.where(m, local_field, 0.0)), workers=fft_workers())) ** 2
    ks = [np.fft.fftfreq(n, d=h) if a < 2 else np.fft.rfftfreq(n, d=h) for a, (n, h) in enumerate(zip(box.shape, v))]
    kx, ky, kz = np.meshgrid(*ks, indexing="ij", sparse=True)
    kk = np.sqrt(kx**2 + ky**2 + kz**2)
    band = (kk > 2.0 / (np.asarray(box.shape) * v).max()) & (kk < 0.5 * float(kk.max()))  # mid frequencies: signal over noise
    idx = np.flatnonzero(band)
    if idx.size > max_points:  # a random subsample (fixed seed) is enough for an energy ratio
        idx = np.sort(np.random.default_rng(0).choice(idx, max_points, replace=False))
    k = np.stack([np.broadcast_to(a, power.shape).reshape(-1)[idx] for a in (kx, ky, kz)], axis=1)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    p = power.reshape(-1)[idx]
    dirs = _fibonacci_cap(b, max_deg, spacing_deg)
    energy = np.empty(len(dirs))
    for start in range(0, len(dirs), 16):
        c = (k @ dirs[start : start + 16].T) ** 2
        cone = np.abs(c - 1.0 / 3.0) < cone_width
        energy[start : start + 16] = (p @ cone) / np.maximum(cone.sum(axis=0), 1)
    best = int(np.argmin(energy))
    angle = float(np.degrees(np.arccos(np.clip(abs(dirs[best] @ b), -1.0, 1.0))))
    return {"best_angle_deg": round(angle, 2), "cone_energy_ratio": float(energy[0] / max(energy[best], 1e-30))}


def estimate_noise_sigma(magnitude: np.ndarray, mask: np.ndarray) -> float | None:
    """Noise standard deviation per channel from the air around the head (Rayleigh mean / sqrt(pi/2)).

    Air is taken as the voxels far from the brain whose magnitude is under 5% of the brain's median;
    ``None`` when there are too few (background zeroed by the scanner, or a tight field of view).
    """
    mag = np.asarray(magnitude, np.float32)
    brain = np.asarray(mask, bool)
    if not brain.any():
        return None
    far = ~ndi.binary_dilation(brain, iterations=3)
    level = 0.05 * float(np.median(mag[brain]))
    air = far & (mag < level) & (mag > 0)
    if air.sum() < 1000:
        return None
    return float(mag[air].mean() / np.sqrt(np.pi / 2.0))


def consistency(
    chi: np.ndarray,
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_direction: Sequence[float],
    rad_per_ppm: float,
    magnitude: np.ndarray,
    sensitivity: np.ndarray | None = None,
    noise_sigma: float | None = None,
    coverage: float | None = None,
) -> tuple[np.ndarray, dict]:
    """The data-consistency map and its summary.

    Parameters
    ----------
    chi, local_field : (X, Y, Z) ppm
    mask : the mask the local field is valid in (V-SHARP's eroded mask)
    voxel_size : mm; b0_direction : voxel frame
    rad_per_ppm : phase per ppm at the echo time (``2 pi gamma B0 TE``)
    magnitude : (X, Y, Z) the (first echo's) magnitude, for W and the noise
    sensitivity : (X, Y, Z), optional
        ``sigma_noise / sensitivity`` is the field's noise (ppm) per voxel; default ``|s| k``
        (one echo). :func:`~pedq_deploy.preprocess.combine_echoes` returns it for several echoes.
    noise_sigma : float, optional
        Noise per channel in magnitude units; default :func:`estimate_noise_sigma`.
    coverage : float, optional
        Share of the brain mask with values, for the coverage flag.

    Returns
    -------
    qc_map : float32 (X, Y, Z), zero outside the mask
    summary : dict
        ``misfit_mean`` (mean of the map), ``misfit_noise_ratio`` (median misfit in noise units,
        None when the noise is unknown), ``misfit_fraction_above_3``, ``flags`` (list of reasons).
    """
    m = np.asarray(mask, bool)
    x = np.asarray(chi, np.float32)
    y = np.asarray(local_field, np.float32)
    if x.shape != m.shape or y.shape != m.shape or np.shape(magnitude) != m.shape:
        raise InputError("chi, local field, mask and magnitude must share one 3D shape")
    if not m.any():
        raise InputError("QC needs a non-empty mask")
    v = check_voxel_size(voxel_size)
    b = check_direction(b0_direction)
    box = crop_to_mask(m)
    d = dipole_kernel_rfft(box.shape, v, b)
    w = fft_workers()

    def field_of(a):
        return box.extract(scipy.fft.irfftn(scipy.fft.rfftn(box.embed(a), workers=w) * d, s=box.shape, workers=w))

    f_chi = field_of(np.where(m, x, 0.0))
    f_one = field_of(m.astype(np.float32))
    r = (y - f_chi)[m]
    g = f_one[m]
    offset = float(r @ g / max(float(g @ g), 1e-30))  # the reference of chi, fitted back
    model = f_chi + offset * f_one
    mag = np.asarray(magnitude, np.float32)
    p99 = float(np.percentile(mag[m], 99)) or 1.0
    weight = np.clip(mag / p99, 0.0, 1.0)
    k = float(rad_per_ppm)
    qc_map = np.where(m, weight * np.abs(np.exp(1j * k * model) - np.exp(1j * k * y)), 0.0).astype(np.float32)

    sigma = estimate_noise_sigma(mag, m) if noise_sigma is None else float(noise_sigma)
    summary: dict = {
        "misfit_mean": float(qc_map[m].mean()),
        "misfit_noise_ratio": None,
        "misfit_fraction_above_3": None,
        "noise_sigma": sigma,
        "flags": [],
    }
    if sigma and sigma > 0:
        sens = (mag * abs(k)) if sensitivity is None else np.asarray(sensitivity, np.float32)
        # misfit / (noise std x sqrt(2/pi)): the mean of |noise| is sigma sqrt(2/pi)
        ratio = np.abs(model - y)[m] * sens[m] / (sigma * np.sqrt(2.0 / np.pi))
        summary["misfit_noise_ratio"] = float(np.median(ratio))
        summary["misfit_fraction_above_3"] = float(np.mean(ratio > 3.0))
        if summary["misfit_noise_ratio"] > QC_THRESHOLDS["misfit_noise_ratio"]:
            summary["flags"].append(
                f"chi does not explain the field: median misfit {summary['misfit_noise_ratio']:.2f}x the noise "
                "(a mask taking in non-brain, phase unwrapping errors, motion, residual background)"
            )
        elif summary["misfit_fraction_above_3"] > QC_THRESHOLDS["misfit_fraction_above_3"]:
            summary["flags"].append(f"local misfit: {summary['misfit_fraction_above_3']:.0%} of the mask misfit by over 3x the noise")
    else:
        summary["flags"].append("noise level unknown (no air around the head): misfit not in noise units")
    b0 = b0_direction_check(y, m, v, b)
    summary["b0_check"] = b0
    if b0["cone_energy_ratio"] > QC_THRESHOLDS["b0_cone_energy_ratio"] and b0["best_angle_deg"] > QC_THRESHOLDS["b0_angle_deg"]:
        summary["flags"].append(
            f"B0 direction: the field's own dipole pattern points {b0['best_angle_deg']:.0f} deg from the given B0 "
            "(check the image orientation / --b0-direction)"
        )
    if coverage is not None and coverage < QC_THRESHOLDS["coverage"]:
        summary["flags"].append(f"low coverage: {coverage:.0%} of the brain mask has values")
    return qc_map, summary
