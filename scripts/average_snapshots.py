"""Average one network's weights over a joint run's snapshots (stochastic weight averaging).

    python scripts/average_snapshots.py RUN OUT [--role recon] [--from-step N]

RUN: a pedq-train run trained with "snapshots": true. OUT gets OUT/snapshots/stepNNNNNN.pt, a
snapshot like the last one averaged over (step = its step) whose ROLE weights are the mean of
every snapshot from --from-step on, so `scripts/snapshot_models.sh OUT STEP` exports it. Integer
buffers (counters) are taken from the last snapshot. Needs torch (the training extra).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--role", default="recon")
    p.add_argument("--from-step", type=int, default=0)
    a = p.parse_args(argv)
    import torch

    from pedq_deploy.training.trainer import SNAPSHOTS, Trainer

    files = [f for f in sorted((a.run / SNAPSHOTS).glob("step*.pt")) if int(f.stem[4:]) >= a.from_step]
    if len(files) < 2:
        print(f"error: fewer than 2 snapshots from step {a.from_step} in {a.run / SNAPSHOTS}", file=sys.stderr)
        return 2
    snaps = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    if any(a.role not in s.get("models", {}) for s in snaps):
        print(f"error: not every snapshot in {a.run} holds a {a.role!r} network", file=sys.stderr)
        return 2
    out = snaps[-1]
    weights = out["models"][a.role]
    for name, value in weights.items():
        if torch.is_floating_point(value):
            weights[name] = torch.stack([s["models"][a.role][name] for s in snaps]).mean(0)
    out["averaged_steps"] = [s["step"] for s in snaps]
    dest = Trainer._write(out, a.out / SNAPSHOTS / files[-1].name)  # temporary name, renamed when complete
    print(f"{dest}: {a.role} averaged over steps {out['averaged_steps']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
