"""Bring a training run's weights back from a machine that returns only small files.

    python scripts/checkpoint_parts.py pack RUN_DIR OUT_DIR [--drop-frozen] [--snapshots MIB]
    python scripts/checkpoint_parts.py unpack PARTS_DIR RUN_DIR  # here: joined, checked, ready for pedq-export

pack (there): the weights without the optimizer state, in parts of 15 MiB. --drop-frozen leaves
out the networks the run kept frozen (they are the export it started from); --snapshots MIB also
takes the run's snapshots, newest first, while everything stays within MIB MiB (unpack puts
them back in RUN_DIR/snapshots).

See pedq_deploy/training/parts.py.
"""
from __future__ import annotations

import sys

from pedq_deploy.errors import InputError
from pedq_deploy.training.parts import join_weight_parts, write_weight_parts


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="checkpoint_parts.py", description=__doc__.splitlines()[0])
    p.add_argument("verb", choices=("pack", "unpack"))
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--drop-frozen", action="store_true")
    p.add_argument("--snapshots", type=float, metavar="MIB")
    a = p.parse_args(argv)
    if a.verb == "unpack" and (a.drop_frozen or a.snapshots is not None):
        p.error("--drop-frozen and --snapshots are for pack")
    try:
        if a.verb == "pack":
            max_bytes = None if a.snapshots is None else int(a.snapshots * 2**20)
            for path in write_weight_parts(a.src, a.dest, drop_frozen=a.drop_frozen, max_bytes=max_bytes):
                print(path)
        else:
            print(join_weight_parts(a.src, a.dest))
    except InputError as exc:
        print(f"checkpoint_parts: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
