"""How the masking network's threshold moves everything after it: V-SHARP, the map, the segmentation box.

The masking network (trained on the phantom's brain: grey and white matter, deep grey matter,
ventricles, veins; no external CSF) over-includes at the source protocol: on training heads its
mask at probability 0.5 held 8-10 times as many false voxels as missed ones, most of them around the
cerebellum and brainstem and down the cord. V-SHARP treats every voxel in the mask as brain, so the
fields of the skull base's sources are kept as "local" and its deconvolution spreads them: in a
neonate they were larger than the deep grey matter's own field.

For each threshold on the masking network's probability (and the true brain mask as the ideal):
mask Dice and false / missed volume against the true brain; the error of the local field in the
deep grey matter (RMS of the difference from the local field V-SHARP gives in the true mask,
over the deep grey matter voxels both eroded masks keep, relative to the RMS of that field);
PedQ-NET's map: NRMSE and HFEN over the true brain, deep grey matter edge sharpness and the mean
absolute error of the 8 structures' means;
and the segmentation network's mean Dice, all as ``pedq-run`` runs them (least-squares unwrapping).
Means over all heads, then per age group (neonates' little iron, infants' more): field error,
segmentation Dice, edge sharpness and deep grey matter error.

Heads: validation seeds 2000-2009 (a setting is being chosen; ``--held-out``: 1000-1009, to report
it), neonates and infants alternating, tilts 0-30 deg, source protocol (TE 4.92 ms, SNR 100).

``.venv/bin/python benchmarks/bench_mask_threshold.py [--subjects 10] [--thresholds 0.5,0.7,0.9]
[--models DIR] [--held-out] [--section NAME] [--from-json]`` -> "mask_threshold" (or NAME) section
of RESULTS.md and results/NAME.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, machine, model_provenance, read_records, update_section, write_records  # noqa: E402

from bench_pedqnet import load_models, source_heads  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.runtime.networks import find_models, mask_from_probability  # noqa: E402
from pedq_deploy.training.data import subject_local_field  # noqa: E402

TRUE = "true brain mask"


def score(s, pedq, brain, ideal) -> dict:
    """Everything after the mask, for one mask of head ``s``; ``ideal``: (local field, eroded mask) in the true mask."""
    t0 = time.perf_counter()
    local, eroded = subject_local_field(s, unwrap="lsq", mask=brain)
    chi = pedq.reconstruct(local, eroded, s.voxel_size, s.b0_direction)
    dgm = (s.labels > 0) & eroded & ideal[1]
    ref = ideal[0][dgm]
    row = {"dice": M.dice(brain, s.brain_mask), "false_ml": float((brain & ~s.brain_mask).sum() * np.prod(s.voxel_size) / 1e3),
           "missed_ml": float((~brain & s.brain_mask).sum() * np.prod(s.voxel_size) / 1e3),
           "dgm_field_error": float(np.sqrt(np.mean((local[dgm] - ref) ** 2)) / np.sqrt(np.mean(ref ** 2)))}
    q = M.score_qsm(chi, s.chi, s.brain_mask, s.labels)
    row.update(nrmse=q["nrmse"], hfen=q["hfen"], dgm_edge_sharpness=q["dgm_edge_sharpness"],
               dgm_mean_abs_error_ppm=q["dgm_mean_abs_error_ppm"])
    if pedq.has("seg"):
        lab = pedq.segment(chi, eroded, s.voxel_size)
        row["seg_dice"] = float(np.mean([M.dice(lab == k, s.labels == k) for k in M.FS_DGM_NAMES]))
    row["seconds"] = time.perf_counter() - t0
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9", help="comma-separated probabilities in (0, 1)")
    ap.add_argument("--models", help="PedQ-NET models (mask, recon, seg); default: the shipped ones")
    ap.add_argument("--held-out", action="store_true", help="the held-out heads (seeds 1000-1009), to report a chosen threshold")
    ap.add_argument("--section", default="mask_threshold", help="RESULTS.md section; also names results/SECTION.json")
    ap.add_argument("--from-json", action="store_true", help="rewrite the section from results/SECTION.json without rerunning")
    args = ap.parse_args()
    out = Path(__file__).with_name("results") / f"{args.section}.json"
    if args.from_json:
        records, note, manifests = read_records(out)
        update_section(args.section, report(records, find_models(args.models), args, note, manifests))
        return
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    if not thresholds or not all(0 < t < 1 for t in thresholds):
        sys.exit("--thresholds: comma-separated probabilities between 0 and 1")
    found, pedq = load_models(args.models)
    if not pedq.has("mask"):
        sys.exit(f"no masking model (mask.json) in {found}")
    note = machine()
    records = []
    for seed, age, tilt, s in source_heads(args.held_out, args.subjects):
        ideal = subject_local_field(s, unwrap="lsq")
        prob = pedq.mask_probability(s.magnitude, s.voxel_size)
        rec = {"seed": seed, "age": age, "tilt_deg": tilt, "masks": {TRUE: score(s, pedq, s.brain_mask, ideal)}}
        for t in thresholds:
            rec["masks"][f"{t:g}"] = score(s, pedq, mask_from_probability(prob, t), ideal)
        records.append(rec)
        print(f"seed {seed} {age} tilt {tilt:.0f}: " + "; ".join(
            f"{k} dice {r['dice']:.3f} field {r['dgm_field_error']:.2f} seg {r.get('seg_dice', float('nan')):.2f}" for k, r in rec["masks"].items()), flush=True)
    pedq.close()
    write_records(out, records, note, found)
    update_section(args.section, report(records, found, args, note))


COLUMNS = (("dice", "mask Dice", "{:.3f}"), ("false_ml", "false mL", "{:.1f}"), ("missed_ml", "missed mL", "{:.1f}"),
           ("dgm_field_error", "DGM local field error", "{:.2f}"), ("nrmse", "PedQ-NET NRMSE", "{:.3f}"),
           ("hfen", "HFEN", "{:.3f}"), ("dgm_edge_sharpness", "DGM edge sharpness", "{:.3f}"),
           ("dgm_mean_abs_error_ppm", "DGM mean abs error (ppm)", "{:.4f}"), ("seg_dice", "segmentation Dice", "{:.3f}"))


# per age group (neonates' little iron, infants' more): means over that group's heads
BY_AGE = (("dgm_field_error", "field error", 2), ("seg_dice", "seg Dice", 3), ("dgm_edge_sharpness", "edge sharpness", 3),
          ("dgm_mean_abs_error_ppm", "DGM error (ppm)", 4))
AGES = (("neonate", "neonates"), ("infant", "infants"))


def report(records, models_dir, args, note, manifests: dict | None = None) -> str:
    held_out = records[0]["seed"] in HELD_OUT_SEEDS
    kind = "held-out" if held_out else "validation"
    names = list(records[0]["masks"])
    cols = [c for c in COLUMNS if c[0] in records[0]["masks"][names[0]]]
    by_age = [c for c in BY_AGE if c[0] in records[0]["masks"][names[0]]]
    ages = [(a, label) for a, label in AGES if any(r["age"] == a for r in records)]
    lines = [f"## The masking network's threshold, and what follows it ({kind} heads" + ("" if args.models is None else f", models `{args.models}`") + ")", "",
             f"{kind.capitalize()} heads (seeds {records[0]['seed']}-{records[-1]['seed']}; neonates and infants alternating, tilts 0-30 deg), "
             "source protocol (TE 4.92 ms, SNR 100), least-squares unwrapping and V-SHARP in each mask, PedQ-NET's map and segmentation as "
             "`pedq-run` makes them. Rows: the masking network's probability above each threshold (largest component, holes filled), and the "
             "true brain mask. \"DGM local field error\": RMS of the local field's difference from the one V-SHARP gives in the true mask, over "
             "the deep grey matter both eroded masks keep, over the RMS of that field (0: as with the true mask). "
             + ("NRMSE and HFEN over the true brain; DGM edge sharpness as in the accuracy sections (1: as sharp as the truth). "
                if any(c[0] == "hfen" for c in cols) else "") + "Mean ± SD over heads.",
             f"Masking network: {model_provenance(models_dir, 'mask', manifests)}. Reconstruction network: "
             f"{model_provenance(models_dir, 'recon', manifests)}. Segmentation network: {model_provenance(models_dir, 'seg', manifests)}.",
             f"Machine: {note}. Script: `benchmarks/bench_mask_threshold.py" + ("" if len(records) == 10 else f" --subjects {len(records)}")
             + ("" if args.models is None else f" --models {args.models}") + (" --held-out" if held_out else "")
             + ("" if args.section == "mask_threshold" else f" --section {args.section}")
             + f" --thresholds {','.join(n for n in names if n != TRUE)}`; raw numbers in `benchmarks/results/{args.section}.json`.", "",
             "| mask | " + " | ".join(c[1] for c in cols) + "".join(f" | {label}: {' / '.join(n for k, n, _ in by_age)}" for _, label in ages) + " |",
             "| --- |" + " ---: |" * (len(cols) + len(ages))]
    for n in names:
        cells = []
        for key, _, fmt in cols:
            v = [r["masks"][n][key] for r in records]
            cells.append(f"{fmt.format(np.mean(v))} ± {fmt.format(np.std(v))}")
        for age, _ in ages:
            group = [r["masks"][n] for r in records if r["age"] == age]
            cells.append(" / ".join(f"{np.mean([m[k] for m in group]):.{digits}f}" for k, _, digits in by_age))
        lines.append(f"| {n if n == TRUE else 'network > ' + n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
