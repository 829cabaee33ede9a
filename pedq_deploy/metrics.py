"""Evaluation metrics for QSM, masks and segmentations.

Conventions (as the QSM-CI scorer and the QSM reconstruction challenge 2.0):

* Scores are computed over the WHOLE truth brain mask. Both maps are zeroed outside it; a voxel
  the method did not cover (zero or non-finite) counts as zero there, so erosion is not free.
  ``coverage`` (share of the mask with a finite, non-zero value) is reported with every score.
* NRMSE and HFEN are ratios (0 = perfect; 1 = as large as the truth itself), not percent.
* Susceptibility is relative: the phantom's truth is referenced to its mean over the brain mask,
  pedq-run's output to its mean over the V-SHARP-eroded mask. Say so wherever values are shown.

References
----------
QSM Challenge 2.0 Organization Committee, "QSM reconstruction challenge 2.0: design and report of
results", Magn. Reson. Med. 86:1241-1255, 2021 (NRMSE, HFEN, SSIM on the brain mask).
A. Milovic et al., "XSIM: a structural similarity index measure optimized for MRI QSM",
Magn. Reson. Med., 2024 (SSIM without value clipping, K1=0.01, K2=0.001, L=1).
S. Ravishankar, Y. Bresler, "MR image reconstruction from highly undersampled k-space data by
dictionary learning", IEEE TMI 30:1028-1041, 2011 (HFEN: LoG filter, sigma 1.5 voxels).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from .errors import InputError

__all__ = [
    "coverage",
    "nrmse",
    "hfen",
    "ssim",
    "xsim",
    "dice",
    "surface_distance",
    "region_stats",
    "edge_sharpness",
    "amplitude_slope",
    "eroded_coverage",
    "score_qsm",
    "FS_DGM_NAMES",
]

FS_DGM_NAMES = {
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
}


def _prep(recon, truth, mask):
    r = np.asarray(recon, np.float64)
    t = np.asarray(truth, np.float64)
    m = np.asarray(mask) > 0
    if r.shape != t.shape or r.shape != m.shape:
        raise InputError(f"shape mismatch: recon {r.shape}, truth {t.shape}, mask {m.shape}")
    if not m.any():
        raise InputError("evaluation mask is empty")
    r = np.where(m & np.isfinite(r), r, 0.0)
    t = np.where(m, t, 0.0)
    return r, t, m


def coverage(recon: np.ndarray, mask: np.ndarray) -> float:
    """Share of the mask where ``recon`` is finite and non-zero."""
    r = np.asarray(recon)
    m = np.asarray(mask) > 0
    return float((np.isfinite(r) & (r != 0) & m).sum() / max(int(m.sum()), 1))


def nrmse(recon, truth, mask) -> float:
    """``||r - t||_2 / ||t||_2`` over the mask."""
    r, t, m = _prep(recon, truth, mask)
    return float(np.linalg.norm((r - t)[m]) / max(np.linalg.norm(t[m]), 1e-12))


def amplitude_slope(recon, truth, mask) -> float:
    """Least-squares slope of the reconstruction on the truth over the mask, each about its own
    mean: 1 when the map carries the truth's contrast, 0.5 when it carries half of it (a map with
    the right pattern at too low a contrast hides the deep grey matter). Uncovered voxels count as
    zero, as in the other scores."""
    r, t, m = _prep(recon, truth, mask)
    rd, td = r[m] - r[m].mean(), t[m] - t[m].mean()
    return float((rd @ td) / max(td @ td, 1e-30))


def eroded_coverage(recon, mask, voxel_size, mm: float = 2.0) -> float:
    """:func:`coverage` over the mask eroded by ``mm`` (a ball in mm on this grid): how much of the
    brain away from its very edge a method leaves without values."""
    v = np.asarray(voxel_size, float)
    r = np.ceil(mm / v).astype(int)
    grid = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    ball = sum((g * vi / mm) ** 2 for g, vi in zip(grid, v)) <= 1.0
    inner = ndi.binary_erosion(np.asarray(mask) > 0, structure=ball)
    return coverage(recon, inner if inner.any() else mask)


def hfen(recon, truth, mask, sigma: float = 1.5) -> float:
    """High-frequency error norm: NRMSE of Laplacian-of-Gaussian filtered maps (sigma in voxels)."""
    r, t, m = _prep(recon, truth, mask)
    lr = ndi.gaussian_laplace(r, sigma, truncate=4.0)
    lt = ndi.gaussian_laplace(t, sigma, truncate=4.0)
    return float(np.linalg.norm((lr - lt)[m]) / max(np.linalg.norm(lt[m]), 1e-12))


def ssim(recon, truth, mask, *, data_range: float | None = None, k1: float = 0.01, k2: float = 0.03, sigma: float = 1.5) -> float:
    """3D SSIM (Gaussian window, sigma in voxels) averaged over the mask.

    ``data_range`` defaults to the truth's 0.5-99.5 percentile range inside the mask.
    """
    r, t, m = _prep(recon, truth, mask)
    if data_range is None:
        lo, hi = np.percentile(t[m], [0.5, 99.5])
        data_range = max(float(hi - lo), 1e-12)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    g = lambda x: ndi.gaussian_filter(x, sigma, truncate=3.5)  # noqa: E731
    mr, mt = g(r), g(t)
    vr = g(r * r) - mr * mr
    vt = g(t * t) - mt * mt
    cov = g(r * t) - mr * mt
    s = ((2 * mr * mt + c1) * (2 * cov + c2)) / ((mr * mr + mt * mt + c1) * (vr + vt + c2))
    return float(s[m].mean())


def xsim(recon, truth, mask) -> float:
    """XSIM: SSIM with no value clipping, L = 1 ppm, K1 = 0.01, K2 = 0.001."""
    return ssim(recon, truth, mask, data_range=1.0, k1=0.01, k2=0.001)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a) > 0
    b = np.asarray(b) > 0
    if a.shape != b.shape:
        raise InputError(f"shape mismatch: {a.shape} vs {b.shape}")
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


def surface_distance(a: np.ndarray, b: np.ndarray, voxel_size=(1.0, 1.0, 1.0)) -> dict:
    """Symmetric boundary distances between two masks, in mm: mean and 95th percentile (HD95).

    The boundary of a mask is its voxels with a 6-neighbour outside it; each boundary voxel's
    distance to the other mask's boundary is taken, over both boundaries together.
    """
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    if a.shape != b.shape:
        raise InputError(f"shape mismatch: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        raise InputError("surface distance of an empty mask")
    edge = lambda m: m & ~ndi.binary_erosion(m, border_value=0)  # noqa: E731
    ea, eb = edge(a), edge(b)
    da = ndi.distance_transform_edt(~ea, sampling=voxel_size)  # distance to a's boundary
    db = ndi.distance_transform_edt(~eb, sampling=voxel_size)
    d = np.concatenate([db[ea], da[eb]])
    return {"mean_mm": float(d.mean()), "hd95_mm": float(np.percentile(d, 95))}


def region_stats(
    chi: np.ndarray,
    labels: np.ndarray,
    voxel_volume_ml: float = 0.0,
    names: dict[int, str] | None = None,
    checks: dict[str, list[str]] | None = None,
) -> list[dict]:
    """Per-label voxels, volume (mL), mean and standard deviation of ``chi`` (ppm); with ``checks``
    (name -> flags of :func:`pedq_deploy.postprocess.segmentation_checks`), ``qc``: ``ok`` or the flags."""
    names = FS_DGM_NAMES if names is None else names
    c = np.asarray(chi, np.float64)
    lab = np.asarray(labels)
    rows = []
    for number, name in names.items():
        sel = lab == number
        n = int(sel.sum())
        rows.append(
            {
                "label": int(number),
                "name": name,
                "voxels": n,
                "volume_ml": n * voxel_volume_ml,
                "mean_ppm": float(c[sel].mean()) if n else float("nan"),
                "std_ppm": float(c[sel].std()) if n else float("nan"),
            }
        )
        if checks is not None:
            rows[-1]["qc"] = ";".join(checks.get(name, [])) or "ok"
    return rows


def edge_sharpness(recon, truth, labels, *, band: int = 1, smooth: float = 0.5) -> float:
    """Sharpness of the deep grey matter boundaries relative to the truth (1 = as sharp).

    In a band of ``band`` voxels on each side of every labelled structure's boundary, the
    reconstruction's gradient is projected on the truth's edge normal and summed, then divided
    by the same sum for the truth. Blurred edges score below 1; noise, having no preferred
    direction, averages out instead of inflating the score.
    """
    r = np.asarray(recon, np.float64)
    t = np.asarray(truth, np.float64)
    lab = np.asarray(labels) > 0
    if not lab.any():
        raise InputError("no labelled structure to measure edge sharpness on")
    boundary = ndi.binary_dilation(lab, iterations=band) & ~ndi.binary_erosion(lab, iterations=band)
    # the (slightly smoothed) truth only defines the edge normals
    gs = np.stack(np.gradient(ndi.gaussian_filter(t, smooth)))
    n = gs / (np.sqrt((gs**2).sum(0)) + 1e-12)
    gt = (np.stack(np.gradient(t)) * n).sum(0)[boundary].sum()
    gr = (np.stack(np.gradient(np.where(np.isfinite(r), r, 0.0))) * n).sum(0)[boundary].sum()
    return float(gr / gt) if abs(gt) > 1e-12 else float("nan")


def score_qsm(recon, truth, mask, labels=None) -> dict:
    """All QSM metrics of one reconstruction against the truth, in one dict."""
    out = {
        "nrmse": nrmse(recon, truth, mask),
        "hfen": hfen(recon, truth, mask),
        "ssim": ssim(recon, truth, mask),
        "xsim": xsim(recon, truth, mask),
        "coverage": coverage(recon, mask),
        "slope": amplitude_slope(recon, truth, mask),
    }
    if labels is not None and np.any(labels):
        r, t, m = _prep(recon, truth, mask)
        out["dgm_edge_sharpness"] = edge_sharpness(r, t, labels)
        rows = []
        for rec_row, tru_row in zip(region_stats(r, labels), region_stats(t, labels)):
            rows.append(
                {
                    **{k: rec_row[k] for k in ("label", "name", "voxels")},
                    "mean_ppm": rec_row["mean_ppm"],
                    "std_ppm": rec_row["std_ppm"],
                    "truth_mean_ppm": tru_row["mean_ppm"],
                    "mean_error_ppm": rec_row["mean_ppm"] - tru_row["mean_ppm"],
                }
            )
        out["regions"] = rows
        errs = [abs(row["mean_error_ppm"]) for row in rows if row["voxels"]]
        out["dgm_mean_abs_error_ppm"] = float(np.mean(errs)) if errs else float("nan")
    return out
