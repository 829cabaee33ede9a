"""PedQ-NET networks, built from MONAI (the field's standard implementations).

* Reconstruction: DynUNet (nnU-Net style: strided convolutions, instance norm, leaky ReLU).
  Input 4 channels ``[local field (ppm), b_x, b_y, b_z]``: the B0 unit vector of the scan in the
  voxel frame, constant over the patch, so one network serves every head tilt (the model loss
  uses each sample's own dipole kernel, so the network learns to use it). Output chi (ppm).
* Segmentation: UNETR on chi (ppm) -> 9 classes (background + 8 deep grey matter structures).
* Brain masking: UNETR on the normalised magnitude -> 2 classes.

Scalings live inside the wrappers, so an exported model takes and returns physical units.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["ReconNet", "SegNet", "MaskNet", "build", "SEG_CLASSES", "recon_input"]

# class index -> FreeSurfer label (0 = background)
SEG_CLASSES = (0, 10, 11, 12, 13, 49, 50, 51, 52)


class ReconNet(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        from monai.networks.nets import DynUNet

        levels = cfg.recon_levels
        strides = [1] + [2] * (levels - 1)
        filters = [min(cfg.recon_filters * 2**i, 320) for i in range(levels)]
        self.net = DynUNet(spatial_dims=3, in_channels=4, out_channels=1, kernel_size=[3] * levels, strides=strides,
                           upsample_kernel_size=strides[1:], filters=filters, norm_name="instance",
                           act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}), res_block=False)
        self.register_buffer("field_scale", torch.tensor(float(cfg.field_scale)))
        self.register_buffer("chi_scale", torch.tensor(float(cfg.chi_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, :1] * self.field_scale, x[:, 1:4]], dim=1)
        return self.net(x) * self.chi_scale


def _unetr(cfg: TrainConfig, in_ch: int, out_ch: int, img_size) -> nn.Module:
    from monai.networks.nets import UNETR

    return UNETR(in_channels=in_ch, out_channels=out_ch, img_size=tuple(img_size), feature_size=cfg.unetr_feature_size,
                 hidden_size=cfg.unetr_hidden_size, mlp_dim=cfg.unetr_mlp_dim, num_heads=cfg.unetr_heads,
                 norm_name="instance", res_block=True, dropout_rate=0.0)


class SegNet(nn.Module):
    def __init__(self, cfg: TrainConfig, chi_input_scale: float = 10.0):
        super().__init__()
        self.net = _unetr(cfg, 1, len(SEG_CLASSES), cfg.seg_region)
        self.register_buffer("input_scale", torch.tensor(chi_input_scale))

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        return self.net(chi * self.input_scale)


class MaskNet(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.net = _unetr(cfg, 1, 2, cfg.patch)

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        return self.net(magnitude)


def recon_input(field_ppm: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(B, 1, X, Y, Z) field and (B, 3) B0 directions -> the (B, 4, X, Y, Z) network input."""
    b = directions.to(field_ppm.dtype)[:, :, None, None, None].expand(-1, -1, *field_ppm.shape[2:])
    return torch.cat([field_ppm, b], dim=1)


def build(kind: str, cfg: TrainConfig) -> dict[str, nn.Module]:
    if kind == "mask":
        return {"mask": MaskNet(cfg)}
    if kind in ("recon", "tv"):
        return {"recon": ReconNet(cfg)}
    if kind == "joint":
        return {"recon": ReconNet(cfg), "seg": SegNet(cfg)}
    raise ValueError(f"unknown kind {kind!r}")
