"""How fast the phantom feeds training: one subject, one 96^3 crop, against a training step.

``.venv/bin/python benchmarks/bench_phantom.py``; writes benchmarks/results/phantom.md.
Training-step times are fixed figures measured once on a 2-core CPU (DynUNet 96^3 batch 1,
forward + backward + Adam: 1.06 / 2.34 / 6.95 s for base filters 8 / 16 / 32).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, median_time, write_section  # noqa: E402

from pedq_deploy.phantom import make_subject, random_crop  # noqa: E402

STEP_S = {"DynUNet base 8": 1.06, "DynUNet base 16": 2.34, "DynUNet base 32": 6.95}


def main() -> None:
    note = machine()
    make_subject(seed=0, shape=(48, 48, 32))  # load the compiled kernels
    rows = []
    grids = {
        "source protocol 256x256x80, 0.78x0.78x2 mm": dict(),
        "training grid 160x160x128, 1.2 mm isotropic": dict(shape=(160, 160, 128), voxel_size=(1.2, 1.2, 1.2)),
    }
    for label, kw in grids.items():
        for age in ("neonate", "infant"):
            seeds = iter(range(10, 100))
            t, s = median_time(lambda: make_subject(seed=next(seeds), age=age, **kw), 3)
            rng = np.random.default_rng(0)
            tc, _ = median_time(lambda: random_crop(s, (96, 96, 96), rng), 20)
            rows.append((label, age, t, tc))
    lines = [
        "## Phantom: data for training",
        "",
        f"Machine: {note}. Script: `benchmarks/bench_phantom.py`. Median of 3 subjects / 20 crops.",
        "",
        "| grid | age | one subject (s) | one 96^3 crop (ms) |",
        "| --- | --- | ---: | ---: |",
    ]
    lines += [f"| {g} | {a} | {t:.2f} | {tc * 1e3:.1f} |" for g, a, t, tc in rows]
    worst = max(t for *_, t, _ in rows)
    crops = 4  # TrainConfig.crops_per_subject default
    lines += [
        "",
        "Crops per subject so that drawing one subject costs no more than one training step (subject time / step time, "
        "worst grid): " + ", ".join(f"{k} ({v:.2f} s/step): {int(np.ceil(worst / v))}" for k, v in STEP_S.items()) + ".",
        f"Today `PhantomStream` draws subjects synchronously in the training process (plus ~1 s of unwrapping and V-SHARP per "
        f"subject), {crops} crops each by default: at the training grid that adds about "
        f"{(max(t for g, _, t, _ in rows if g.startswith('training')) + 1.0) / crops:.1f} s per step, "
        f"{100 * (max(t for g, _, t, _ in rows if g.startswith('training')) + 1.0) / crops / STEP_S['DynUNet base 16']:.0f}% of a base-16 step. "
        "Moving subject drawing to a background worker process (it needs no torch) would hide it; not done yet.",
    ]
    write_section("phantom", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
