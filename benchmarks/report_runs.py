"""The training runs behind the shipped models: steps, time per step, loss curve, validation.

Two tables: the lineage of every shipped model, read from the manifests in ``export/`` (each
fine-tuning run records the run it started from, so the chain survives when the run folders are
gone), and the loss curves of the run folders given (or found: runs/*/train_log.csv).
``.venv/bin/python benchmarks/report_runs.py [RUN_DIR ...]``; writes the "runs" section of RESULTS.md.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import chain_totals, training_chain, update_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]] or sorted(p.parent for p in (REPO / "runs").glob("*/train_log.csv"))
    lines = ["## The training runs behind the shipped models", ""] + lineage() + [
             "Loss curves of the run folders given (or found in runs/): each run's `train_log.csv` (loss per step, mean over windows of 10% of the run) and `val_log.csv` (held-out crops, seeds "
             "2000-2001). Script: `benchmarks/report_runs.py`.", "",
             "| run | losses | steps | median s/step | time in steps (h) | each loss at 0-10% / 45-55% / 90-100% of the run | last validation |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for run in runs:
        if not (run / "train_log.csv").is_file():
            continue
        rows = list(csv.DictReader(open(run / "train_log.csv")))
        sec = np.array([float(r["seconds"]) for r in rows])
        n = len(rows)
        parts = [k for k in rows[0] if k not in ("step", "seconds")]

        def windows(name):  # mean over the first, middle and last tenth of the run
            a = np.array([float(r[name]) for r in rows])
            win = lambda lo, hi: a[int(lo * n): max(int(hi * n), int(lo * n) + 1)].mean()  # noqa: E731
            return f"{name} {win(0, 0.1):.4g} / {win(0.45, 0.55):.4g} / {win(0.9, 1.0):.4g}"

        val = list(csv.DictReader(open(run / "val_log.csv"))) if (run / "val_log.csv").is_file() else []
        lines.append(f"| `{run.name}` | {'+'.join(parts)} | {n} | {np.median(sec):.3g} | {sec.sum() / 3600:.2f} | "
                     f"{'; '.join(windows(p) for p in parts)} | "
                     f"{', '.join(f'{k} {int(float(v))}' if k == 'step' else f'{k} {float(v):.3g}' for k, v in val[-1].items()) if val else 'none (run shorter than validate_every)'} |")
    update_section("runs", "\n".join(lines))
    print("\n".join(lines))


def lineage() -> list[str]:
    rows = ["Lineage of the shipped models (from the manifests in `export/`; runs oldest first, each starting from the one "
            "before):", "", "| model | runs: kind, steps, hours | total steps | total hours | hardware | last validation of the last run |",
            "| --- | --- | ---: | ---: | --- | --- |"]
    for manifest in sorted((REPO / "export").glob("**/*.json")):
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("format") != "pedq-model/1" or not meta.get("training"):
            continue
        chain = training_chain(meta["training"], meta.get("role", ""))
        steps, hours, hw = chain_totals(chain)
        val = (chain[-1].get("validation_log") or "").strip().splitlines()
        last = "none"
        if len(val) > 1:  # header, then one row per validation: step first
            step, *values = val[-1].split(",")
            last = f"step {step}: " + ", ".join(f"{k} {float(v):.3g}" for k, v in zip(val[0].split(",")[1:], values))
        runs = "; ".join(f"{t.get('kind')} {t.get('steps')}, {float(t.get('train_seconds') or 0) / 3600:.2f} h" for t in chain)
        rows.append(f"| `{manifest.relative_to(REPO / 'export')}` | {runs} | {steps} | {hours:.2f} | {'; '.join(hw)} | {last} |")
    return rows + [""]


if __name__ == "__main__":
    main()
