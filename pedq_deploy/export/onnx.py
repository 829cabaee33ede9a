"""PyTorch -> ONNX with a parity check against onnxruntime, and the manifest that ships with it.

Exporter: ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based exporter), opset 20,
with a dynamic batch axis. Both exporters handle MONAI's DynUNet and UNETR with parity within
1e-4; the TorchScript one is used because it traces these static, convolutional graphs in
seconds with no extra dependency, and names the batch axis dynamic with ``dynamic_axes``. The
export fails (and leaves nothing behind) when onnxruntime's output differs from PyTorch's
beyond ``rtol=1e-3, atol=1e-4``.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..backends.manifest import MANIFEST_FORMAT
from ..errors import InputError, PedqError
from ..io.checksum import sha256_file
from ..training.config import TrainConfig
from ..training.networks import SEG_CLASSES, build

__all__ = ["export_network", "export_checkpoint", "ExportError", "OPSET"]

OPSET = 20
NORMALISATION = {
    "recon": "input: local field in ppm (scaled inside the model) in the B0-aligned frame (isotropic voxel_size_mm, "
    "B0 along the patch's z axis; pedq_deploy.frame). Output: chi in ppm, same frame.",
    "seg": "input: chi in ppm (scaled inside the model). Output: logits of the classes in label_map.",
    "mask": "input: magnitude divided by its 99th percentile inside the head, clipped to [0, 1.5]. Output: logits (background, brain).",
}


class ExportError(PedqError):
    """The exported model does not reproduce the PyTorch model."""


def export_network(
    model: torch.nn.Module,
    role: str,
    in_channels: int,
    patch,
    out_dir: str | Path,
    *,
    voxel_size,
    provenance: dict | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    frame: str | None = None,
) -> Path:
    """Export one network to ``out_dir/{role}.onnx`` + ``{role}.json``; returns the manifest path.

    ``frame``: the orientation the network was trained in, ``"b0"`` (the B0-aligned frame) or
    ``"voxel"`` (the scan's axes); default ``"b0"`` for recon and seg, ``"voxel"`` for mask."""
    import onnxruntime as ort

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, manifest_path = out / f"{role}.onnx", out / f"{role}.json"
    tmp = out / f".{role}.onnx.partial"
    model = model.eval().cpu()
    x = torch.randn(1, in_channels, *patch, generator=torch.Generator().manual_seed(0))
    if role == "recon":  # a realistic input: field ~ 0.01 ppm
        x *= 0.01
    with torch.no_grad():
        expected = model(x).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            input_names=["input"],
            output_names=["output"],
            opset_version=OPSET,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
        )
    try:
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(["output"], {"input": x.numpy()})[0]
        # a second batch size checks the dynamic axis
        got2 = session.run(["output"], {"input": np.concatenate([x.numpy()] * 2)})[0]
        if (
            got.shape != expected.shape
            or not np.allclose(got, expected, rtol=rtol, atol=atol)
            or not np.allclose(got2[1], expected[0], rtol=rtol, atol=atol)
        ):
            err = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("nan")
            raise ExportError(f"{role}: onnxruntime differs from PyTorch (max abs error {err:.3g} > atol {atol} + rtol {rtol})")
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, onnx_path)
    import onnx
    import onnxruntime

    manifest = {
        "format": MANIFEST_FORMAT,
        "role": role,
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "inputs": [{"name": "input", "shape": ["batch", in_channels, *patch], "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": ["batch", int(expected.shape[1]), *patch], "dtype": "float32"}],
        "dynamic_axes": {"input": [0], "output": [0]},
        "patch": list(patch),
        "voxel_size_mm": [float(v) for v in voxel_size],
        "frame": frame or ("b0" if role in ("recon", "seg") else "voxel"),
        "label_map": {str(i): fs for i, fs in enumerate(SEG_CLASSES)} if role == "seg" else ({"0": 0, "1": 1} if role == "mask" else None),
        "normalisation": NORMALISATION[role],
        "opset": OPSET,
        "exporter": "torch.onnx.export(dynamo=False), TorchScript-based",
        "parity": {"rtol": rtol, "atol": atol, "max_abs_error": float(np.abs(got - expected).max())},
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "training": provenance or {},
    }
    tmpm = manifest_path.with_suffix(".json.partial")
    tmpm.write_text(json.dumps(manifest, indent=2))
    os.replace(tmpm, manifest_path)
    return manifest_path


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """Export every network of a pedq-train checkpoint (recon, seg, mask) with its provenance."""
    p = Path(checkpoint)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint {p}: {str(exc).splitlines()[0]}") from None
    known = {f.name for f in fields(TrainConfig)}  # a checkpoint may name options that no longer exist (they were off)
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items() if k in known})
    models = build(state["kind"], cfg)
    # a checkpoint that travelled without its frozen networks (dev/checkpoint_parts.py --drop-frozen) exports
    # the others: the frozen ones are the export the run started from
    dropped = [name for name in models if name not in state["models"]]
    if any(name not in (state.get("dropped_frozen") or ()) for name in dropped):
        raise InputError(f"checkpoint {p} lacks the {', '.join(dropped)} network(s) of its {state['kind']} run")
    models = {name: m for name, m in models.items() if name not in dropped}
    for name, m in models.items():
        m.load_state_dict(state["models"][name])
    val_log = p.parent / "val_log.csv"
    provenance = {
        "kind": state["kind"],
        "steps": state["step"],
        "config": state["config"],
        "train_seeds": list(cfg.train_seeds),
        "val_seeds": list(cfg.val_seeds),
        "validation_log": val_log.read_text() if val_log.is_file() else None,
        "checkpoint_sha256": sha256_file(p),
        "train_seconds": state.get("train_seconds"),
        "hardware": state.get("hardware"),
        "init_from": state.get("init_from") or None,
        "uses": state.get("uses") or None,
    }
    patches = {
        "recon": tuple(cfg.recon_window) if state["kind"] == "joint" else tuple(cfg.patch),
        "seg": tuple(cfg.seg_region),
        "mask": tuple(cfg.patch),
    }
    # the recon and seg networks work in the B0-aligned isotropic frame, the mask network on the phantom's grid
    voxels = {"recon": (cfg.frame_voxel,) * 3, "seg": (cfg.frame_voxel,) * 3, "mask": tuple(cfg.voxel_size)}
    # a network the run kept frozen has the weights it was loaded with: its record is that model's
    start = state.get("init_from") or {}
    own = {name: (start[name].get("training") or {}) if name in cfg.frozen and name in start else provenance for name in models}
    # a seg run's UNETR learnt on the voxel axes (pedq-run's segmentation grid); the others keep export_network's default
    return [
        export_network(
            m,
            name,
            1,
            patches[name],
            out_dir,
            voxel_size=voxels[name],
            provenance=own[name],
            frame="voxel" if state["kind"] == "seg" else None,
        )
        for name, m in models.items()
    ]
