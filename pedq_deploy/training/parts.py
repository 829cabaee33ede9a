"""A run's trained weights as a few small files, and back.

A machine lent for training may return only small files (the GPU machines here: at most 8 files
of 16 MiB). ``write_weight_parts`` keeps what export needs (the networks, config, step, training
time, hardware and lineage), drops the optimizer state, and splits it into numbered parts with a
checksum; ``join_weight_parts`` checks and joins them into a run folder that ``pedq-export``
reads. Such a checkpoint cannot be resumed (its Adam moments are gone): continue from its export
with ``pedq-train --init-from``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch

from ..errors import InputError

__all__ = ["write_weight_parts", "join_weight_parts"]

INDEX = "weights.parts.json"
RESUME_ONLY = ("optimizer", "torch_rng")  # checkpoint entries that only resuming a run needs


def write_weight_parts(run_dir: str | Path, out_dir: str | Path, part_bytes: int = 15 * 2**20) -> list[Path]:
    """Write ``run_dir``'s checkpoint without its optimizer state as parts of at most ``part_bytes``."""
    src = Path(run_dir) / "checkpoint.pt"
    if not src.is_file():
        raise InputError(f"checkpoint not found: {src}")
    state = torch.load(src, map_location="cpu", weights_only=True)
    slim = {k: v for k, v in state.items() if k not in RESUME_ONLY}
    buf = io.BytesIO()
    torch.save(slim, buf)
    data = buf.getvalue()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(data), part_bytes):
        p = out / f"weights.part{i // part_bytes:02d}"
        p.write_bytes(data[i: i + part_bytes])
        paths.append(p)
    index = {"parts": [p.name for p in paths], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "kind": state["kind"], "step": state["step"]}
    (out / INDEX).write_text(json.dumps(index, indent=2))
    return [*paths, out / INDEX]


def join_weight_parts(parts_dir: str | Path, run_dir: str | Path) -> Path:
    """Check and join parts into ``run_dir/checkpoint.pt`` (written under a temporary name first)."""
    parts_dir = Path(parts_dir)
    try:
        index = json.loads((parts_dir / INDEX).read_text())
        data = b"".join((parts_dir / name).read_bytes() for name in index["parts"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the weight parts in {parts_dir}: {exc}") from None
    if len(data) != index["bytes"] or hashlib.sha256(data).hexdigest() != index["sha256"]:
        raise InputError(f"the weight parts in {parts_dir} are incomplete or corrupt (checksum differs)")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "checkpoint.pt.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, run / "checkpoint.pt")
    return run / "checkpoint.pt"
