"""PedQ-NET losses (torch).

``L_model = || W m (exp(i d*chi) - exp(i y)) ||_1`` (Jung et al.'s model-based loss as used by the
source study): ``y`` is the local field in radians, ``d`` the unit dipole kernel of each sample's
own B0 direction and voxel size, applied by FFT on a zero-padded grid so a patch's field does not
wrap around, ``W`` a magnitude weight and ``m`` the brain mask.
"""

from __future__ import annotations

import numpy as np
import torch

from ..physics import padded_shape, phase_per_ppm

__all__ = ["dipole_kernels", "model_loss", "tv_loss", "phase_per_ppm"]


def dipole_kernels(shape, voxel_size, directions: torch.Tensor, device=None) -> torch.Tensor:
    """(B, X, Y, Z//2+1) rFFT-layout dipole kernels for per-sample B0 directions (B, 3)."""
    ks = []
    for axis, (n, d) in enumerate(zip(shape, voxel_size)):
        k = torch.fft.rfftfreq(n, d=d) if axis == 2 else torch.fft.fftfreq(n, d=d)
        ks.append(k.to(device=device, dtype=torch.float32))
    kx, ky, kz = ks[0][:, None, None], ks[1][None, :, None], ks[2][None, None, :]
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    b = directions.to(device=device, dtype=torch.float32)
    kb = kx[None] * b[:, 0, None, None, None] + ky[None] * b[:, 1, None, None, None] + kz[None] * b[:, 2, None, None, None]
    d = 1.0 / 3.0 - kb**2 / k2[None]
    d[:, 0, 0, 0] = 0.0
    return d


def forward_field_torch(chi: torch.Tensor, kernels: torch.Tensor, pshape) -> torch.Tensor:
    """chi (B, X, Y, Z) in ppm -> field (B, X, Y, Z) in ppm, zero-padded to ``pshape``."""
    spec = torch.fft.rfftn(chi, s=pshape, dim=(-3, -2, -1))
    field = torch.fft.irfftn(spec * kernels, s=pshape, dim=(-3, -2, -1))
    return field[..., : chi.shape[-3], : chi.shape[-2], : chi.shape[-1]]


def model_loss(
    chi: torch.Tensor,
    local_field_rad: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor,
    directions: torch.Tensor,
    voxel_size,
    rad_per_ppm: torch.Tensor,
    pad_factor: float = 1.5,
) -> torch.Tensor:
    """Model-based L1 loss, averaged over the mask voxels of the batch.

    chi (B, X, Y, Z) ppm; local_field_rad (B, X, Y, Z) radians; weight, mask (B, X, Y, Z);
    directions (B, 3) voxel-frame B0; rad_per_ppm (B,) phase per ppm of each sample.
    """
    pshape = padded_shape(chi.shape[-3:], pad_factor)
    kernels = dipole_kernels(pshape, voxel_size, directions, device=chi.device)
    phi = forward_field_torch(chi, kernels, pshape) * rad_per_ppm[:, None, None, None]
    diff = torch.polar(torch.ones_like(phi), phi) - torch.polar(torch.ones_like(local_field_rad), local_field_rad)
    wm = weight * mask
    return (wm * diff.abs()).sum() / mask.sum().clamp_min(1.0)


def tv_loss(chi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of chi inside the mask (mean over mask voxels)."""
    tv = 0.0
    for dim in (-3, -2, -1):
        tv = tv + (torch.diff(chi, dim=dim).abs() * torch.narrow(mask, dim, 0, mask.shape[dim] - 1)).sum()
    return tv / mask.sum().clamp_min(1.0)


def as_tensor(a: np.ndarray, device=None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)
