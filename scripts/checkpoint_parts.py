"""Bring a training run's weights back from a machine that returns only small files.

    python scripts/checkpoint_parts.py pack RUN_DIR OUT_DIR     # there: weights (no optimizer) in parts
    python scripts/checkpoint_parts.py unpack PARTS_DIR RUN_DIR  # here: joined, checked, ready for pedq-export

See pedq_deploy/training/parts.py.
"""
from __future__ import annotations

import sys

from pedq_deploy.errors import InputError
from pedq_deploy.training.parts import join_weight_parts, write_weight_parts


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("pack", "unpack"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if argv[0] == "pack":
            for p in write_weight_parts(argv[1], argv[2]):
                print(p)
        else:
            print(join_weight_parts(argv[1], argv[2]))
    except InputError as exc:
        print(f"checkpoint_parts: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
