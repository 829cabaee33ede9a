"""A short CPU training run of each PedQ-NET network: steps, time per step, loss curve.

Default networks and patches (96^3, DynUNet base 16, UNETR feature 16 / hidden 384), batch 1,
data drawn on the fly from the phantom. ``.venv/bin/python benchmarks/bench_training.py [--steps N]``;
writes benchmarks/results/training.md. Run alone: it uses both cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, write_section  # noqa: E402

from pedq_deploy.training.config import TrainConfig  # noqa: E402
from pedq_deploy.training.trainer import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    note = machine()
    import torch

    lines = [
        "## Short CPU training runs",
        "",
        f"{args.steps} steps per network, batch 1, 96^3 patches, default sizes; data drawn on the fly (a subject every 4 crops: "
        "160x160x128 at 1.2 mm, unwrapped and V-SHARPed as the runtime does). "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. Machine: {note}. Script: `benchmarks/bench_training.py`.",
        "",
        "| network (kind) | parameters | median s/step (incl. data) | loss: first 5 steps -> last 5 steps (mean) |",
        "| --- | ---: | ---: | --- |",
    ]
    work = Path(tempfile.mkdtemp(prefix="pedq-train-bench-"))
    for kind in ("recon", "tv", "joint", "mask"):
        cfg = TrainConfig(steps=args.steps, device="cpu")
        tr = Trainer(kind, cfg, work / kind)
        n = sum(p.numel() for m in tr.models.values() for p in m.parameters())
        losses, times = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            parts = tr.train_step()
            times.append(time.perf_counter() - t0)
            losses.append(parts["total"])
            print(kind, tr.step, f"{parts['total']:.5g}", f"{times[-1]:.2f}s", flush=True)
        k = min(5, len(losses))
        names = {
            "recon": "reconstruction DynUNet (L_model)",
            "tv": "nnU-Net_TV ablation (L_model + TV)",
            "joint": "PedQ-NET joint (L_model + lambda L_seg, UNETR seg)",
            "mask": "masking UNETR (Dice + CE)",
        }
        lines.append(
            f"| {names[kind]} | {n / 1e6:.1f} M | {np.median(times):.2f} | {np.mean(losses[:k]):.4g} -> {np.mean(losses[-k:]):.4g} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    lines += [
        "",
        "These runs show the loop works and the losses move; they are not trained models. Training to a usable model "
        "runs for hours (resumable: rerun `pedq-train KIND --out DIR` to continue).",
    ]
    write_section("training", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
