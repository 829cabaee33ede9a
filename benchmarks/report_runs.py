"""The training runs behind the shipped models: steps, time per step, loss curve, validation.

``.venv/bin/python benchmarks/report_runs.py [RUN_DIR ...]`` (default: runs/tv_cpu runs/joint_cpu
runs/mask_cpu, made by scripts/train_cpu.sh); writes the "runs" section of RESULTS.md.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import update_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]] or [REPO / "runs" / n for n in ("tv_cpu", "joint_cpu", "mask_cpu")]
    lines = ["## The training runs behind the shipped models", "",
             "Each run's `train_log.csv` (loss per step, mean over windows of 10% of the run) and `val_log.csv` (held-out crops, seeds "
             "2000-2001). Script: `benchmarks/report_runs.py`.", "",
             "| run | losses | steps | median s/step | wall time (h) | loss at 0-10% / 45-55% / 90-100% of the run | last validation |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for run in runs:
        if not (run / "train_log.csv").is_file():
            continue
        rows = list(csv.DictReader(open(run / "train_log.csv")))
        loss = np.array([float(r["total"]) for r in rows])
        sec = np.array([float(r["seconds"]) for r in rows])
        n = len(loss)
        win = lambda a, b: loss[int(a * n): max(int(b * n), int(a * n) + 1)].mean()  # noqa: E731
        val = list(csv.DictReader(open(run / "val_log.csv"))) if (run / "val_log.csv").is_file() else []
        parts = [k for k in rows[0] if k not in ("step", "seconds")]
        lines.append(f"| `{run.name}` | {'+'.join(parts)} | {n} | {np.median(sec):.2f} | {sec.sum() / 3600:.2f} | "
                     f"{win(0, 0.1):.4g} / {win(0.45, 0.55):.4g} / {win(0.9, 1.0):.4g} | "
                     f"{', '.join(f'{k} {float(v):.3g}' for k, v in val[-1].items()) if val else 'none (run shorter than validate_every)'} |")
    update_section("runs", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
