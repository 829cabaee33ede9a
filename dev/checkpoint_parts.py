"""Bring a training run's weights back from a machine that returns only small files.

    python dev/checkpoint_parts.py pack RUN_DIR OUT_DIR [--drop-frozen]   # there
    python dev/checkpoint_parts.py unpack PARTS_DIR RUN_DIR               # here: joined, checked, ready for pedq-export

A lent GPU machine returns at most 8 files of 16 MiB. ``pack`` keeps what export needs (the
networks, config, step, training time, hardware and lineage), drops the optimizer state, and
splits it into numbered parts with a checksum; --drop-frozen also leaves out the networks the run
kept frozen (they are the export it started from). ``unpack`` checks and joins them into a run
folder that ``pedq-export`` reads. Such a checkpoint cannot be resumed (its Adam moments are
gone): continue from its export with ``pedq-train --init-from``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from pathlib import Path

from pedq_deploy.errors import InputError

INDEX = "weights.parts.json"
RESUME_ONLY = ("optimizer", "torch_rng")  # checkpoint entries that only resuming a run needs


def _slim(state: dict, drop_frozen: bool) -> dict:
    """``state`` without what only resuming needs; ``drop_frozen``: without the networks the run kept frozen."""
    slim = {k: v for k, v in state.items() if k not in RESUME_ONLY}
    frozen = [k for k in (state.get("config") or {}).get("frozen") or () if k in slim["models"]]
    if drop_frozen and frozen:
        slim["models"] = {k: v for k, v in slim["models"].items() if k not in frozen}
        slim["dropped_frozen"] = frozen
    return slim


def write_weight_parts(run_dir: str | Path, out_dir: str | Path, part_bytes: int = 15 * 2**20, *, drop_frozen: bool = False) -> list[Path]:
    """Write ``run_dir``'s checkpoint without its optimizer state as parts of at most ``part_bytes``."""
    import torch

    src = Path(run_dir) / "checkpoint.pt"
    if not src.is_file():
        raise InputError(f"checkpoint not found: {src}")
    state = torch.load(src, map_location="cpu", weights_only=True)
    slim = _slim(state, drop_frozen)
    buf = io.BytesIO()
    torch.save(slim, buf)
    data = buf.getvalue()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(0, len(data), part_bytes):
        p = out / f"weights.part{i // part_bytes:02d}"
        p.write_bytes(data[i : i + part_bytes])
        paths.append(p)
    index = {
        "parts": [p.name for p in paths],
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "kind": state["kind"],
        "step": state["step"],
        "dropped_frozen": slim.get("dropped_frozen", []),
    }
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
    path = Path(run_dir) / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="checkpoint_parts.py", description=__doc__.splitlines()[0])
    p.add_argument("verb", choices=("pack", "unpack"))
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--drop-frozen", action="store_true")
    a = p.parse_args(argv)
    if a.verb == "unpack" and a.drop_frozen:
        p.error("--drop-frozen is for pack")
    try:
        if a.verb == "pack":
            for path in write_weight_parts(a.src, a.dest, drop_frozen=a.drop_frozen):
                print(path)
        else:
            print(join_weight_parts(a.src, a.dest))
    except InputError as exc:
        print(f"checkpoint_parts: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
