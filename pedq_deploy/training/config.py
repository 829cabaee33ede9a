"""Training configuration: a JSON file of the fields below (unknown keys are an error)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import InputError

__all__ = ["TrainConfig", "load_config", "referenced_roles", "KINDS", "OPERATIONAL", "LEGACY", "SEG_INPUTS"]

KINDS = ("mask", "recon", "joint", "tv", "seg")
SEG_INPUTS = ("masked", "raw")
# what a checkpoint that predates a field did (where that differs from the field's default now)
LEGACY = {"seg_input": "raw"}
# fields that change how a run is carried out, not what it computes: a resumed run may change them
OPERATIONAL = ("steps", "device", "checkpoint_every", "validate_every", "data_workers")


@dataclass
class TrainConfig:
    # data (the phantom)
    patch: tuple[int, int, int] = (96, 96, 96)
    batch_size: int = 1
    voxel_size: tuple[float, float, float] = (1.2, 1.2, 1.2)  # training grid of the simulated heads
    grid: tuple[int, int, int] = (160, 160, 128)
    frame_voxel: float = 1.2  # mm, isotropic grid of the B0-aligned frame the recon/seg networks work in
    ages: tuple[str, ...] = ("neonate", "infant")
    # where heads come from (phantom/sources.py), one drawn per subject: the procedural phantom, or
    # a real brain template warped at random ("icbm"; "cvs" is kept for judging, never for training)
    anatomies: tuple[str, ...] = ("procedural",)
    # domain randomisation (0: off). contrast_jitter j: each tissue's proton density times U(1-j, 1+j)
    # and T2* times exp(U(-j, j)), drawn per subject; the rest act on the magnitude (mask runs):
    # bias_field b: times exp(a smooth random field of SD b); slice_mm (lo, hi): blurred along z as
    # slices of that thickness would be; fov_cut c: up to that share of the field of view cut away at
    # the top, the bottom or a side, as a scan that misses part of the head or takes in the neck
    contrast_jitter: float = 0.0
    bias_field: float = 0.0
    slice_mm: tuple[float, float] = (0.0, 0.0)
    fov_cut: float = 0.0
    supersample: tuple[int, int, int] | None = None  # the simulator's sub-voxels (None: its default)
    max_tilt_deg: float = 30.0
    snr_range: tuple[float, float] = (40.0, 200.0)
    echo_time_range: tuple[float, float] = (4.92e-3, 25e-3)
    field_strength: float = 3.0
    # phase unwrapping before V-SHARP (the pipeline's unwrap setting); the configs in configs/ say which each stage used
    unwrap: str = "laplacian"
    crops_per_subject: int = 4
    data_workers: int = 0  # processes preparing the next subjects ahead (0: in the training process); results do not depend on it
    foreground_fraction: float = 0.0  # joint: share of crops centred on a deep grey matter structure
    train_seeds: tuple[int, int] = (0, 1000)  # subjects drawn from seeds in [a, b)
    val_seeds: tuple[int, ...] = (2000, 2001)  # held out; the accuracy benchmark uses 1000-1009
    # networks
    recon_filters: int = 16
    recon_levels: int = 5
    unetr_feature_size: int = 16
    unetr_hidden_size: int = 384
    unetr_mlp_dim: int = 1536
    unetr_heads: int = 6
    field_scale: float = 100.0  # network input = local field (ppm) * field_scale
    chi_scale: float = 0.1  # chi (ppm) = network output * chi_scale
    # losses
    lambda_seg: float = 0.1
    lambda_tv: float = 1e-3
    seg_region: tuple[int, int, int] = (96, 96, 96)
    recon_window: tuple[int, int, int] = (96, 96, 96)  # sliding window of the recon net inside the region
    # optimisation
    steps: int = 1000
    lr: float = 1e-3
    seg_lr: float | None = None  # joint: the segmentation UNETR's own learning rate (None: lr)
    # joint: what the segmentation UNETR sees. "masked": chi inside the V-SHARP-eroded mask referenced
    # to its mean there, zero outside, as pedq-run gives it; "raw": the U-Net's output as it comes
    # (runs before this field trained so: LEGACY)
    seg_input: str = "masked"
    # seg: the folder of exported models whose reconstruction network makes the maps the segmentation
    # UNETR trains on, through pedq-run's own code (PedqModels.reconstruct, then seg_grid)
    seg_recon: str | None = None
    # seg: each crop's deep grey matter box drawn with a fraction (dgm_box) uniform in this range on
    # each axis, its centre moved by up to +-seg_box_shift of the brain's half extent, and the box
    # placed anywhere in the window where it is smaller. Without it (the defaults) every box is
    # the true mask's, centred in the window, and the network learns positions in the window,
    # which a masking network's longer box breaks
    seg_box_fraction: tuple[float, float] = (0.65, 0.65)
    seg_box_shift: float = 0.0
    # seg: share of heads masked by the masking network in seg_recon (unwrapping, V-SHARP, the
    # reconstruction and the box on its mask, as pedq-run runs) instead of the true brain mask
    seg_network_mask: float = 0.0
    # joint / recon / tv: the share of heads whose unwrapping, V-SHARP and loss mask use the masking
    # network of the exported models folder mask_model (brain probability > its default threshold),
    # as pedq-run masks by default, instead of the true brain mask
    recon_network_mask: float = 0.0
    # the closing (mm) of those network masks, as pedq-run's mask_closing (0: the masks the models
    # shipped before the closing was in pedq-run were trained on)
    network_mask_closing: float = 0.0
    mask_model: str | None = None
    frozen: tuple[str, ...] = ()  # networks whose weights stay as loaded (joint: ("recon",) trains the segmentation UNETR alone)
    weight_decay: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 50
    validate_every: int = 100
    device: str = "auto"  # auto: CUDA when present
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def load_config(path: str | Path | None, **overrides) -> TrainConfig:
    data = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"config file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"config {p} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"config {p} must hold a JSON object")
    data.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(f"unknown config keys: {', '.join(unknown)}")
    for k, v in list(data.items()):
        if isinstance(v, list):
            data[k] = tuple(v)
    cfg = TrainConfig(**data)
    from ..preprocess.unwrap import UNWRAP_METHODS

    if cfg.unwrap not in UNWRAP_METHODS:
        raise InputError(f"unwrap must be one of {', '.join(UNWRAP_METHODS)}, got {cfg.unwrap!r}")
    if cfg.seg_input not in SEG_INPUTS:
        raise InputError(f"seg_input must be one of {', '.join(SEG_INPUTS)}, got {cfg.seg_input!r}")
    if isinstance(cfg.frozen, str) or not all(isinstance(r, str) for r in cfg.frozen):
        raise InputError(f"frozen must be a list of network names, got {cfg.frozen!r}")
    f = cfg.seg_box_fraction
    if not (isinstance(f, tuple) and len(f) == 2 and all(isinstance(v, (int, float)) for v in f) and 0.2 <= f[0] <= f[1] <= 1.5):
        raise InputError(f"seg_box_fraction must be [low, high] with 0.2 <= low <= high <= 1.5, got {cfg.seg_box_fraction!r}")
    if not isinstance(cfg.seg_box_shift, (int, float)) or not 0 <= cfg.seg_box_shift <= 0.5:
        raise InputError(f"seg_box_shift must be in [0, 0.5], got {cfg.seg_box_shift!r}")
    from ..phantom.simulate import ANATOMIES

    if not cfg.anatomies or isinstance(cfg.anatomies, str) or any(a not in ANATOMIES for a in cfg.anatomies):
        raise InputError(f"anatomies must be a list of {', '.join(ANATOMIES)}, got {cfg.anatomies!r}")
    for name in ("contrast_jitter", "bias_field", "fov_cut"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= (0.9 if name != "bias_field" else 2.0):
            raise InputError(f"{name} must be a number >= 0 (0: off), got {v!r}")
    sl = cfg.slice_mm
    if not (isinstance(sl, tuple) and len(sl) == 2 and all(isinstance(x, (int, float)) for x in sl) and 0 <= sl[0] <= sl[1] <= 10):
        raise InputError(f"slice_mm must be [low, high] mm with 0 <= low <= high <= 10 (0: off), got {cfg.slice_mm!r}")
    if not isinstance(cfg.seg_network_mask, (int, float)) or not 0 <= cfg.seg_network_mask <= 1:
        raise InputError(f"seg_network_mask must be a share in [0, 1], got {cfg.seg_network_mask!r}")
    if not isinstance(cfg.recon_network_mask, (int, float)) or not 0 <= cfg.recon_network_mask <= 1:
        raise InputError(f"recon_network_mask must be a share in [0, 1], got {cfg.recon_network_mask!r}")
    nmc = cfg.network_mask_closing
    if isinstance(nmc, bool) or not isinstance(nmc, (int, float)) or not math.isfinite(nmc) or nmc < 0:
        raise InputError(f"network_mask_closing must be a number of mm >= 0, got {nmc!r}")
    if cfg.recon_network_mask > 0 and cfg.seg_network_mask > 0:
        raise InputError("recon_network_mask and seg_network_mask: give one (a seg run masks its heads with seg_network_mask)")
    if not isinstance(cfg.data_workers, int) or cfg.data_workers < 0:
        raise InputError(f"data_workers must be a whole number >= 0, got {cfg.data_workers!r}")
    return cfg


def referenced_roles(kind: str, config: dict) -> dict[str, tuple[str, ...]]:
    """The config fields of a ``kind`` run that name a folder of exported models its data comes
    from, each with the networks it uses there: ``seg_recon``'s recon network (and its masking
    network with ``seg_network_mask``) for a seg run, ``mask_model``'s masking network with
    ``recon_network_mask`` for the others. ``config``: the config's fields as a dict (a recorded
    one may lack the newer fields)."""
    refs: dict[str, tuple[str, ...]] = {}
    if kind == "seg" and config.get("seg_recon"):
        refs["seg_recon"] = ("recon",) + (("mask",) if config.get("seg_network_mask", 0) > 0 else ())
    if kind != "seg" and config.get("recon_network_mask", 0) > 0 and config.get("mask_model"):
        refs["mask_model"] = ("mask",)
    return refs
