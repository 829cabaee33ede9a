"""The masking network's transfer gap: masking networks trained on different sources of heads, each
scored on held-out heads of real anatomy (and of the procedural phantom), with BET and the classic
masker beside them.

    .venv/bin/python benchmarks/bench_mask_transfer.py --models "procedural alone=DIR" --models "both sources=DIR" [--heads 3]

Each ``--models`` is ``LABEL=FOLDER`` (a folder with mask.json + mask.onnx), scored at each
``--thresholds`` probability and each ``--closings`` radius (mm) of the mask's closing. Beside Dice,
each mask's coverage: the share of the brain (eroded by 2 mm) that keeps values after V-SHARP's
erosion of that mask, which is what the mask costs the map. Heads come from the same cache as
bench_heads.py (benchmarks/_work/heads), so they are the scoreboard's held-out heads.
Writes results/mask_transfer.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, VALIDATION_SEEDS, machine, write_json, write_section  # noqa: E402
from bench_heads import AGES, _cells, _stat, cached_bet, cached_head, mask_scores  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.config import MASK_CLOSING_MM, MASK_THRESHOLD  # noqa: E402
from pedq_deploy.phantom.sources import PROTOCOL_NAMES, PROTOCOLS, SOURCES  # noqa: E402
from pedq_deploy.preprocess import classic_mask, vsharp  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, mask_from_probability  # noqa: E402


def scores(mask, s) -> dict:
    """Dice, leak and miss (:func:`mask_scores`), and the coverage V-SHARP leaves with this mask."""
    _, eroded = vsharp(np.zeros(mask.shape, np.float32), mask, s.voxel_size)
    return {**mask_scores(mask, s.brain_mask), "coverage": M.eroded_coverage(eroded.astype(np.float32), s.brain_mask, s.voxel_size, 2.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", action="append", required=True, help="LABEL=FOLDER, repeatable")
    ap.add_argument("--sources", default=",".join(SOURCES))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--validation", action="store_true", help="validation heads (to choose a model or a threshold on)")
    ap.add_argument("--thresholds", default=str(MASK_THRESHOLD), help="comma-separated brain probabilities to score each network at")
    ap.add_argument("--no-baselines", action="store_true", help="score the networks only (no classic masker, no BET)")
    ap.add_argument("--out", default=None, help="name of the results section (default mask_transfer[_validation])")
    ap.add_argument("--closings", default=f"{MASK_CLOSING_MM:g}", help="comma-separated closing radii (mm) to score each network at")
    a = ap.parse_args()
    seeds = (VALIDATION_SEEDS if a.validation else HELD_OUT_SEEDS)[: a.heads]
    thresholds = [float(t) for t in a.thresholds.split(",")]
    closings = [float(c) for c in a.closings.split(",")]
    name = a.out or ("mask_transfer_validation" if a.validation else "mask_transfer")
    sets = [m.split("=", 1) for m in a.models]
    runners = {label: PedqModels(folder) for label, folder in sets}
    shas = {label: json.loads((Path(folder) / "mask.json").read_text())["sha256"][:12] for label, folder in sets}
    records = []
    for src in a.sources.split(","):
        for prot in a.protocols.split(","):
            for age in AGES:
                for seed in seeds:
                    s = cached_head(src, prot, age, int(seed))
                    rec = {"source": src, "protocol": prot, "age": age, "seed": int(seed), "masks": {}}
                    for label, models in runners.items():
                        prob = models.mask_probability(s.magnitude, s.voxel_size)
                        for t in thresholds:
                            for c in closings:
                                key = (
                                    label
                                    + (f" @ {t:g}" if len(thresholds) > 1 else "")
                                    + (f", closed {c:g} mm" if len(closings) > 1 else "")
                                )
                                rec["masks"][key] = scores(mask_from_probability(prob, t, c, s.voxel_size), s)
                    if not a.no_baselines:
                        rec["masks"]["classic"] = scores(classic_mask(s.magnitude, s.voxel_size), s)
                        bet, _ = cached_bet(src, prot, age, int(seed), s)
                        if bet is not None:
                            rec["masks"]["BET"] = scores(bet, s)
                    records.append(rec)
                    print(src, prot, age, seed, {k: round(v["dice"], 3) for k, v in rec["masks"].items()}, flush=True)
    baselines = [] if a.no_baselines else ["BET", "classic"]
    labels = list(dict.fromkeys(k for r in records for k in r["masks"] if k not in ("BET", "classic"))) + baselines
    data = {"records": records, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "models": shas, "validation": a.validation}
    write_json(name, data)
    kind = "validation" if a.validation else "held-out"
    lines = [
        ("## Closing the masking network's mask" if len(closings) > 1 else "## The masking network's transfer gap")
        + (" (validation heads)" if a.validation else ""),
        "",
        f"Script: `benchmarks/bench_mask_transfer.py` ({data['date']}); {kind} heads (seeds {seeds[0]}-"
        f"{seeds[-1]}), {a.heads} a cell. Masking networks: "
        + "; ".join(f"{label} (`mask.onnx` {shas[label]})" for label, _ in sets)
        + f". Machine: {data['machine']}.",
        "",
        "Dice against the true brain mask, mean ± SD over heads; in brackets the share of the brain the mask leaks outside it. "
        "Coverage (second table): the share of the true brain, eroded by 2 mm, that V-SHARP's erosion of the mask leaves with values.",
        "",
        "| source | protocol | age | " + " | ".join(labels) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in labels) + " |",
    ]
    for (src, prot, age), rs in _cells(records):
        cells = []
        for label in labels:
            got = [r["masks"][label] for r in rs if label in r["masks"]]
            cells.append(f"{_stat([g['dice'] for g in got])} ({_stat([g['outside'] for g in got])})" if got else "n/a")
        lines.append(f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| source | protocol | age | " + " | ".join(f"{k}: coverage" for k in labels) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in labels) + " |",
    ]
    for (src, prot, age), rs in _cells(records):
        cells = [_stat([r["masks"][k]["coverage"] for r in rs if k in r["masks"]]) for k in labels]
        lines.append(f"| {src} | {PROTOCOL_NAMES[prot]} | {age} | " + " | ".join(cells) + " |")
    means = {k: float(np.mean([r["masks"][k]["dice"] for r in records if k in r["masks"]])) for k in labels}
    cover = {k: float(np.mean([r["masks"][k]["coverage"] for r in records if k in r["masks"]])) for k in labels}
    lines += [
        "",
        "Mean Dice over every head: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()) + ".",
        "Mean coverage over every head: " + ", ".join(f"{k} {v:.3f}" for k, v in cover.items()) + ".",
    ]
    write_section(name, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
