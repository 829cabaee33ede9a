"""Model manifests: what a shipped model is, checked before a single voxel is computed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..io.checksum import sha256_file

__all__ = ["ModelManifest", "load_manifest", "sha256_file", "MANIFEST_FORMAT", "ROLES"]

MANIFEST_FORMAT = "pedq-model/1"
ROLES = ("mask", "recon", "seg")


@dataclass
class ModelManifest:
    path: Path  # the manifest file
    role: str
    file: Path  # the ONNX model
    sha256: str
    inputs: list[dict]
    outputs: list[dict]
    patch: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    raw: dict = field(default_factory=dict)
    engine_file: Path | None = None  # a TensorRT engine built from the model, if any

    @property
    def in_channels(self) -> int:
        return int(self.inputs[0]["shape"][1])

    @property
    def out_channels(self) -> int:
        return int(self.outputs[0]["shape"][1])


def _need(d: dict, key: str, kind, where: str):
    if key not in d or not isinstance(d[key], kind):
        raise InputError(f"model manifest {where}: missing or malformed {key!r}")
    return d[key]


def load_manifest(path: str | Path, *, verify: bool = True) -> ModelManifest:
    """Read a manifest and (by default) check its model file's sha256.

    Raises InputError naming the file when the manifest is missing or malformed, the model file
    is missing, or its checksum differs.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"model manifest not found: {p}")
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"model manifest {p} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise InputError(f"model manifest {p}: not a {MANIFEST_FORMAT} manifest")
    role = _need(raw, "role", str, str(p))
    if role not in ROLES:
        raise InputError(f"model manifest {p}: unknown role {role!r}")
    model = p.parent / _need(raw, "file", str, str(p))
    if Path(raw["file"]).name != raw["file"]:
        raise InputError(f"model manifest {p}: the model file must sit next to the manifest")
    inputs = _need(raw, "inputs", list, str(p))
    outputs = _need(raw, "outputs", list, str(p))
    patch = _need(raw, "patch", list, str(p))
    voxel = _need(raw, "voxel_size_mm", list, str(p))
    for io in inputs + outputs:
        if not isinstance(io, dict) or "name" not in io or not isinstance(io.get("shape"), list) or len(io["shape"]) != 5:
            raise InputError(f"model manifest {p}: inputs/outputs need a name and a 5D shape")
    if len(patch) != 3 or any(not isinstance(x, int) or x < 1 for x in patch):
        raise InputError(f"model manifest {p}: patch must be three positive integers")
    if list(inputs[0]["shape"][2:]) != list(patch):
        raise InputError(f"model manifest {p}: input shape {inputs[0]['shape']} does not match the patch {patch}")
    sha = _need(raw, "sha256", str, str(p))
    if not model.is_file():
        raise InputError(f"model file not found: {model} (named by {p})")
    if verify and sha256_file(model) != sha:
        raise InputError(f"model file {model} does not match the sha256 in {p}: corrupted or replaced")
    engine = raw.get("tensorrt_engine")
    return ModelManifest(
        p,
        role,
        model,
        sha,
        inputs,
        outputs,
        tuple(patch),
        tuple(float(x) for x in voxel),
        raw,
        (p.parent / engine) if isinstance(engine, str) else None,
    )
