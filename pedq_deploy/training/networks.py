"""PedQ-NET networks, built from MONAI (the field's standard implementations).

* Reconstruction: DynUNet (nnU-Net style: strided convolutions, instance norm, leaky ReLU).
  Input: the local field (ppm) in the B0-aligned frame (:mod:`pedq_deploy.frame`: isotropic voxels,
  B0 along z), so one network serves every head tilt and voxel size with one dipole kernel; the
  runtime rotates in and out. Output chi (ppm) in the same frame.
* Segmentation: UNETR on chi (ppm) -> 9 classes (background + 8 deep grey matter structures).
* Brain masking: UNETR on the normalised magnitude -> 2 classes.

Scalings live inside the wrappers, so an exported model takes and returns physical units.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig

__all__ = ["ReconNet", "SegNet", "MaskNet", "build", "SEG_CLASSES"]

# class index -> FreeSurfer label (0 = background)
SEG_CLASSES = (0, 10, 11, 12, 13, 49, 50, 51, 52)


class ReconNet(nn.Module):
    def __init__(self, cfg: TrainConfig):
        super().__init__()
        from monai.networks.nets import DynUNet

        levels = cfg.recon_levels
        strides = [1] + [2] * (levels - 1)
        filters = [min(cfg.recon_filters * 2**i, 320) for i in range(levels)]
        self.net = DynUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            kernel_size=[3] * levels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            norm_name="instance",
            act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
            res_block=False,
        )
        self.register_buffer("field_scale", torch.tensor(float(cfg.field_scale)))
        self.register_buffer("chi_scale", torch.tensor(float(cfg.chi_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.field_scale) * self.chi_scale


def _unetr(cfg: TrainConfig, in_ch: int, out_ch: int, img_size) -> nn.Module:
    from monai.networks.nets import UNETR

    return UNETR(
        in_channels=in_ch,
        out_channels=out_ch,
        img_size=tuple(img_size),
        feature_size=cfg.unetr_feature_size,
        hidden_size=cfg.unetr_hidden_size,
        mlp_dim=cfg.unetr_mlp_dim,
        num_heads=cfg.unetr_heads,
        norm_name="instance",
        res_block=True,
        dropout_rate=0.0,
    )


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


def build(kind: str, cfg: TrainConfig) -> dict[str, nn.Module]:
    if kind == "mask":
        return {"mask": MaskNet(cfg)}
    if kind in ("recon", "tv"):
        return {"recon": ReconNet(cfg)}
    if kind == "joint":
        return {"recon": ReconNet(cfg), "seg": SegNet(cfg)}
    if kind == "seg":
        return {"seg": SegNet(cfg)}
    raise ValueError(f"unknown kind {kind!r}")
