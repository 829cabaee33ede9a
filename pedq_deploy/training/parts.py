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
PACKED = "packed_snapshots"  # in the joined bytes: the snapshots that travelled with the checkpoint


def _slim(state: dict, drop_frozen: bool) -> dict:
    """``state`` without what only resuming needs; ``drop_frozen``: without the networks the run kept
    frozen too (their weights are those of the export the run started from, ``init_from``)."""
    slim = {k: v for k, v in state.items() if k not in RESUME_ONLY}
    frozen = [k for k in (state.get("config") or {}).get("frozen") or () if k in slim["models"]]
    if drop_frozen and frozen:
        slim["models"] = {k: v for k, v in slim["models"].items() if k not in frozen}
        slim["dropped_frozen"] = frozen
    return slim


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def write_weight_parts(run_dir: str | Path, out_dir: str | Path, part_bytes: int = 15 * 2**20, *, drop_frozen: bool = False,
                       max_bytes: int | None = None) -> list[Path]:
    """Write ``run_dir``'s checkpoint without its optimizer state as parts of at most ``part_bytes``.

    ``drop_frozen``: leave out the networks the run kept frozen (``pedq-export`` then exports the
    others; the frozen ones are the starting export's). ``max_bytes``: also take the run's snapshots
    (``snapshots/stepNNNNNN.pt``), newest first, as long as everything stays within that many
    bytes; ``join_weight_parts`` puts them back in ``RUN_DIR/snapshots``."""
    src = Path(run_dir) / "checkpoint.pt"
    if not src.is_file():
        raise InputError(f"checkpoint not found: {src}")
    state = torch.load(src, map_location="cpu", weights_only=True)
    slim = _slim(state, drop_frozen)
    data = _bytes(slim)
    if max_bytes is not None:
        if len(data) > max_bytes:
            raise InputError(f"the checkpoint alone is {len(data)} bytes, over max_bytes {max_bytes}")
        packed = {}
        for f in sorted((Path(run_dir) / "snapshots").glob("step*.pt"), reverse=True):
            snap = _slim(torch.load(f, map_location="cpu", weights_only=True), drop_frozen)
            trial = _bytes({**slim, PACKED: {**packed, f.name: snap}})
            if len(trial) > max_bytes:
                break
            packed[f.name], data = snap, trial
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(data), part_bytes):
        p = out / f"weights.part{i // part_bytes:02d}"
        p.write_bytes(data[i: i + part_bytes])
        paths.append(p)
    index = {"parts": [p.name for p in paths], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "kind": state["kind"], "step": state["step"], "dropped_frozen": slim.get("dropped_frozen", []),
             "snapshots": sorted(packed) if max_bytes is not None else []}
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
    if index.get("snapshots"):
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        for name, snap in state.pop(PACKED).items():
            _write_atomic(_bytes(snap), run / "snapshots" / name)
        data = _bytes(state)
    return _write_atomic(data, run / "checkpoint.pt")


def _write_atomic(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path
