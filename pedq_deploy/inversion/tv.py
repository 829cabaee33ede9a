"""Total-variation regularised dipole inversion by ADMM with closed-form FFT updates.

Reference: B. Bilgic et al., "Fast image reconstruction with L2-regularization", J. Magn. Reson.
Imaging 40(1):181-191, 2014 (the closed-form ADMM for TV-QSM is in its supplement and in
the authors' public code); S. Boyd et al., "Distributed optimization and statistical learning via
ADMM", 2011.

Problem: ``min_chi 1/2 || m (D chi - f) ||^2 + lam || grad chi ||_1`` with the data term taken
over the whole padded box (field zero outside the mask), which makes the chi update diagonal in
k-space. Each iteration costs one real FFT pair plus fused Numba passes.

With a prior map (``prior``, e.g. the reconstruction network's), the problem gains
``alpha/2 || chi - chi_prior ||^2``: where ``D(k)^2`` is small against ``alpha`` (the magic-angle
cone, which the field cannot determine) the prior decides, elsewhere the field and TV do. It
stays diagonal in k-space: the chi update's denominator gains ``alpha`` and its numerator
``alpha F[chi_prior]``. ADMM then starts from the prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import scipy.fft
from scipy import ndimage as ndi

from ..errors import InputError
from ..physics import dipole_kernel_rfft, fft_workers
from ._common import check_inversion_input, demean
from ._crop import crop_to_mask

__all__ = ["tv_admm", "structure_edge_weight"]


def _gradient_eigs(shape, voxel_size) -> np.ndarray:
    """Sum over axes of |E_a(k)|^2 for forward differences divided by the voxel size."""
    total = np.zeros((shape[0], shape[1], shape[2] // 2 + 1), np.float32)
    for axis, (n, h) in enumerate(zip(shape, voxel_size)):
        k = np.arange(n // 2 + 1) if axis == 2 else np.fft.fftfreq(n) * n
        e2 = (2.0 - 2.0 * np.cos(2.0 * np.pi * k / n)) / (h * h)
        s = [1, 1, 1]
        s[axis] = e2.size
        total = total + e2.reshape(s).astype(np.float32)
    return total


@numba.njit(inline="always")
def _soft(v, kappa):  # pragma: no cover - compiled
    if v > kappa:
        return v - kappa
    if v < -kappa:
        return v + kappa
    return 0.0


@numba.njit(parallel=True, fastmath=True, cache=True)
def _shrink_update(chi, w, u, inv_h, kappa, rhs):  # pragma: no cover - compiled
    """z = shrink(grad chi + u, kappa); u += grad chi - z; w = z - u; rhs = grad^T w.

    ``kappa`` has shape (1, 1, 1, 1) for one value everywhere (unweighted TV: a branch the loop
    hoists, where reading a full or zero-stride array cost ~9%), (1, n0, n1, n2) for one value per
    voxel on its three forward differences, or (3, n0, n1, n2) for one per difference. Periodic
    neighbours come from precomputed index steps (no integer modulo in the inner loop). Only u and
    w = z - u are stored: the chi update needs nothing else.
    """
    n0, n1, n2 = chi.shape
    h0, h1, h2 = inv_h[0], inv_h[1], inv_h[2]
    uniform = kappa.shape[1] == 1
    d1 = 1 if kappa.shape[0] == 3 else 0
    d2 = 2 if kappa.shape[0] == 3 else 0
    k0 = kappa[0, 0, 0, 0]
    for i in numba.prange(n0):
        ip = i + 1 if i + 1 < n0 else 0
        for j in range(n1):
            jp = j + 1 if j + 1 < n1 else 0
            for k in range(n2):
                kp = k + 1 if k + 1 < n2 else 0
                c = chi[i, j, k]
                if uniform:
                    t0 = t1 = t2 = k0
                else:
                    t0, t1, t2 = kappa[0, i, j, k], kappa[d1, i, j, k], kappa[d2, i, j, k]
                v0 = (chi[ip, j, k] - c) * h0 + u[0, i, j, k]
                v1 = (chi[i, jp, k] - c) * h1 + u[1, i, j, k]
                v2 = (chi[i, j, kp] - c) * h2 + u[2, i, j, k]
                z0, z1, z2 = _soft(v0, t0), _soft(v1, t1), _soft(v2, t2)
                u[0, i, j, k], u[1, i, j, k], u[2, i, j, k] = v0 - z0, v1 - z1, v2 - z2
                w[0, i, j, k], w[1, i, j, k], w[2, i, j, k] = 2.0 * z0 - v0, 2.0 * z1 - v1, 2.0 * z2 - v2
    for i in numba.prange(n0):
        im = i - 1 if i > 0 else n0 - 1
        for j in range(n1):
            jm = j - 1 if j > 0 else n1 - 1
            for k in range(n2):
                km = k - 1 if k > 0 else n2 - 1
                rhs[i, j, k] = (
                    (w[0, im, j, k] - w[0, i, j, k]) * h0 + (w[1, i, jm, k] - w[1, i, j, k]) * h1 + (w[2, i, j, km] - w[2, i, j, k]) * h2
                )


@numba.njit(parallel=True, fastmath=True, cache=True)
def _chi_update(spec, dtf, inv_denom, rho):  # pragma: no cover - compiled
    """spec = (rho * spec + D^T F f) / (|D|^2 + rho |E|^2), in one pass."""
    n0, n1, n2 = spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                spec[i, j, k] = (rho * spec[i, j, k] + dtf[i, j, k]) * inv_denom[i, j, k]


def _inverse_denominator(d, shape, v, rho: float, alpha: float) -> np.ndarray:
    """1 / (|D|^2 + rho |E|^2 + alpha): the chi update's k-space denominator, in both ADMM forms."""
    denom = (d * d + rho * _gradient_eigs(shape, v) + alpha).astype(np.float32)
    if alpha == 0:
        denom[0, 0, 0] = 1.0  # the mean is undetermined; it is fixed by demeaning over the mask
    return (1.0 / denom).astype(np.float32)


def _start(box, m, prior, alpha: float) -> np.ndarray:
    """ADMM's first chi on the padded box: the prior inside the mask where one is weighted, else 0."""
    if alpha > 0:
        return box.embed(np.where(m, prior, 0.0)).astype(np.float32)
    return np.zeros(box.shape, np.float32)


def _shrink_thresholds(kappa: float, tv_weight, box) -> np.ndarray:
    """The shrinkage threshold ``lam / rho`` for :func:`_shrink_update`: (1, 1, 1, 1) for plain TV,
    else one per voxel or per difference, scaled by ``tv_weight`` inside the box (1 outside it:
    the box's margin is outside the mask anyway)."""
    if tv_weight is None:
        return np.full((1, 1, 1, 1), kappa, np.float32)
    parts = tv_weight if tv_weight.ndim == 4 else tv_weight[None]
    return np.stack([(np.float32(kappa) * (1.0 - box.embed(1.0 - p))).astype(np.float32) for p in parts])


@numba.njit(parallel=True, fastmath=True, cache=True)
def _data_update(dchi, u, f, w, rho_d):  # pragma: no cover - compiled
    """z = (w f + rho_d (D chi + u)) / (w + rho_d); u += D chi - z; dchi = z - u (in place)."""
    n0, n1, n2 = dchi.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                v = dchi[i, j, k] + u[i, j, k]
                z = (w[i, j, k] * f[i, j, k] + rho_d * v) / (w[i, j, k] + rho_d)
                u[i, j, k] = v - z
                dchi[i, j, k] = 2.0 * z - v


@numba.njit(parallel=True, fastmath=True, cache=True)
def _chi_update_split(spec, rhs_spec, q_spec, d, prior_spec, inv_denom, rho, rho_d):  # pragma: no cover - compiled
    """spec = (rho F[grad^T (g - u)] + rho_d D F[z - u_d] + alpha F[prior]) / denominator."""
    n0, n1, n2 = spec.shape
    for i in numba.prange(n0):
        for j in range(n1):
            for k in range(n2):
                spec[i, j, k] = (rho * rhs_spec[i, j, k] + rho_d * d[i, j, k] * q_spec[i, j, k] + prior_spec[i, j, k]) * inv_denom[i, j, k]


def _tv_data_masked(f, m, dm, v, b, lam, rho, iterations, prior, alpha, tv_weight):
    """tv_admm with the data term on ``dm`` only: ADMM on chi, g = grad chi and z = D chi."""
    rho_d = 1.0  # the data split's penalty, 1: the chi update has the unsplit form's denominator
    box = crop_to_mask(m)
    shape = box.shape
    w = fft_workers()
    d = dipole_kernel_rfft(shape, v, b).astype(np.float32)
    inv_denom = _inverse_denominator(d, shape, v, rho, alpha)
    fb = box.embed(np.where(dm, f, 0.0))
    wb = box.embed(dm.astype(np.float32))
    chi = _start(box, m, prior, alpha)
    if alpha > 0:
        prior_spec = (alpha * scipy.fft.rfftn(chi, workers=w)).astype(np.complex64)
    else:
        prior_spec = np.zeros(d.shape, np.complex64)
    spec = scipy.fft.rfftn(chi, workers=w).astype(np.complex64)
    zu = np.zeros((3,) + shape, np.float32)
    u = np.zeros((3,) + shape, np.float32)
    u_d = np.zeros(shape, np.float32)
    rhs = np.zeros(shape, np.float32)
    inv_h = (1.0 / v).astype(np.float32)
    kappa = _shrink_thresholds(lam / rho, tv_weight, box)
    for _ in range(iterations):
        _shrink_update(chi, zu, u, inv_h, kappa, rhs)
        dchi = scipy.fft.irfftn(spec * d, s=shape, workers=w).astype(np.float32, copy=False)
        _data_update(dchi, u_d, fb, wb, np.float32(rho_d))
        rhs_spec = scipy.fft.rfftn(rhs, workers=w)
        q_spec = scipy.fft.rfftn(dchi, workers=w)
        _chi_update_split(spec, rhs_spec, q_spec, d, prior_spec, inv_denom, np.float32(rho), np.float32(rho_d))
        chi = scipy.fft.irfftn(spec, s=shape, workers=w).astype(np.float32, copy=False)
    return demean(box.extract(chi), m)


def structure_edge_weight(labels: np.ndarray, weight: float, band: int = 1, across: bool = False) -> np.ndarray:
    """A TV weight map (for :func:`tv_admm`'s ``tv_weight``) that lets edges form on the boundaries
    of labelled structures (with the background or with another structure).

    ``labels``: integer map, 0 for no structure (e.g. the segmentation network's 8 deep grey matter
    structures).

    * ``across=False``: a (nx, ny, nz) map, ``weight`` within ``band`` voxels of any boundary and 1
      elsewhere. Band 1 marks the voxels on both sides of each label change along the voxel axes.
      Every difference from a marked voxel is weighted, also those along the boundary, so noise
      can grow in the whole band.
    * ``across=True``: a (3, nx, ny, nz) map, one weight per forward difference (voxel x to
      x + 1 along each axis): ``weight`` on the differences along an axis that cross a label change
      along that axis, or lie within ``band - 1`` voxels of one along it; 1 on every other
      difference. An edge may form across the boundary (up to ``band - 1`` voxels off, for a
      boundary the labels place imprecisely) while TV keeps its full weight along it.
    """
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"labels must be a 3D integer map, got {lab.ndim}D {lab.dtype}")
    if not (np.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise InputError(f"the edge weight must lie in [0, 1], got {weight}")
    if int(band) < 1:
        raise InputError(f"the edge band must be >= 1 voxel, got {band}")
    crossing = np.zeros((3,) + lab.shape, bool)  # crossing[a, x]: labels differ between x and x + e_a
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        crossing[(axis,) + tuple(lo)] = lab[tuple(lo)] != lab[tuple(hi)]
    if not across:
        # a voxel is marked when a difference from it or into it crosses (crossing's last slice along
        # each axis is empty, so the roll brings nothing round)
        edge = crossing.any(0)
        for axis in range(3):
            edge |= np.roll(crossing[axis], 1, axis)
        if band > 1 and edge.any():
            edge = ndi.binary_dilation(edge, iterations=int(band) - 1)
        return np.where(edge, np.float32(weight), np.float32(1.0))
    if band > 1:
        for axis in range(3):
            line = np.zeros((3, 3, 3), bool)  # three voxels along this axis only
            centre: list = [1, 1, 1]
            centre[axis] = slice(None)
            line[tuple(centre)] = True
            if crossing[axis].any():
                crossing[axis] = ndi.binary_dilation(crossing[axis], line, iterations=int(band) - 1)
    return np.where(crossing, np.float32(weight), np.float32(1.0))


def tv_admm(
    local_field: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    lam: float = 3e-4,
    rho: float | None = None,
    iterations: int = 60,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
    tv_weight: np.ndarray | None = None,
    data_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Susceptibility (ppm) from the local field (ppm) by TV-regularised ADMM.

    Parameters
    ----------
    lam : float
        TV weight (the field is in ppm, gradients in ppm/mm).
    rho : float, optional
        ADMM penalty; default ``100 * lam``.
    iterations : int
        ADMM iterations (each one real FFT pair).
    prior : ndarray, optional
        A susceptibility map (ppm) on the field's grid to stay close to, e.g. PedQ-NET's output;
        only its values inside ``mask`` are used.
    prior_weight : float
        ``alpha``, in units of the squared dipole kernel (which lies in [0, 4/9]): the prior decides
        the frequencies where ``D(k)^2 < alpha``. Needs ``prior``; 0 ignores it.
    tv_weight : ndarray, optional
        A factor in [0, 1] on ``lam``, as MEDI weights its TV by anatomy: below 1 where an edge is
        expected (e.g. on the boundaries of segmented structures, :func:`structure_edge_weight`),
        so TV lets the field make it there. It only permits an edge; the data term still has to
        want one. Shape ``(nx, ny, nz)``: one factor per voxel, on its three forward differences;
        ``(3, nx, ny, nz)``: one per forward difference (x to x + 1 along each axis). Default: 1
        everywhere.
    data_mask : bool ndarray, optional
        Where the field is known, inside ``mask`` (e.g. the brain eroded by V-SHARP, with ``mask``
        the whole brain). The data term is then taken there only and chi is free elsewhere, so
        the rim that background removal left without a field gets the susceptibility whose
        dipole fields best explain the field inside it, held by TV (and the prior, where given).
        This splits ``D chi`` from the data (FANSI's weighted form, Milovic et al. 2018): two more
        FFTs an iteration. Default: the field is known on all of ``mask``.

    Returns
    -------
    float32 chi, referenced to its mean over the mask, zero outside.
    """
    f, m, v, b = check_inversion_input(local_field, mask, voxel_size, direction)
    if not lam > 0 or iterations < 1:
        raise InputError(f"TV needs lam > 0 and iterations >= 1, got lam={lam}, iterations={iterations}")
    alpha = float(prior_weight)
    if not (np.isfinite(alpha) and alpha >= 0):
        raise InputError(f"TV's prior weight must be >= 0, got {prior_weight}")
    if alpha > 0 and prior is None:
        raise InputError("a prior weight needs a prior map")
    if prior is not None:
        prior = np.asarray(prior, np.float32)
        if prior.shape != f.shape:
            raise InputError(f"prior shape {prior.shape} differs from the field's {f.shape}")
        if not np.all(np.isfinite(prior[m])):
            raise InputError("the prior map has NaN or infinite values inside the mask")
    if tv_weight is not None:
        tv_weight = np.asarray(tv_weight, np.float32)
        if tv_weight.shape not in (f.shape, (3,) + f.shape):
            raise InputError(f"TV weight map shape {tv_weight.shape} is neither the field's {f.shape} nor (3,) + it")
        if not np.all((tv_weight >= 0) & (tv_weight <= 1)):
            raise InputError("the TV weight map must lie in [0, 1] (NaN is not allowed)")
    if data_mask is not None:
        dm = np.asarray(data_mask)
        if dm.shape != m.shape:
            raise InputError(f"data mask shape {dm.shape} differs from the field's {m.shape}")
        dm = dm > 0
        if not dm.any():
            raise InputError("the data mask is empty")
        if (dm & ~m).any():
            raise InputError("the data mask must lie inside the mask")
    rho = 100.0 * lam if rho is None else float(rho)
    if data_mask is not None:
        return _tv_data_masked(f, m, dm, v, b, lam, rho, iterations, prior, alpha, tv_weight)
    box = crop_to_mask(m)
    shape = box.shape
    w = fft_workers()
    d = dipole_kernel_rfft(shape, v, b)
    inv_denom = _inverse_denominator(d, shape, v, rho, alpha)
    dtf = scipy.fft.rfftn(box.embed(np.where(m, f, 0.0)), workers=w) * d
    chi = _start(box, m, prior, alpha)
    if alpha > 0:
        dtf += alpha * scipy.fft.rfftn(chi, workers=w)
    dtf = dtf.astype(np.complex64)
    zu = np.zeros((3,) + shape, np.float32)  # z - u
    u = np.zeros((3,) + shape, np.float32)
    rhs = np.zeros(shape, np.float32)
    inv_h = (1.0 / v).astype(np.float32)
    kappa = _shrink_thresholds(lam / rho, tv_weight, box)
    for _ in range(iterations):
        _shrink_update(chi, zu, u, inv_h, kappa, rhs)
        spec = scipy.fft.rfftn(rhs, workers=w)
        _chi_update(spec, dtf, inv_denom, np.float32(rho))
        chi = scipy.fft.irfftn(spec, s=shape, workers=w, overwrite_x=True).astype(np.float32, copy=False)
    return demean(box.extract(chi), m)
