"""What the B0-aligned frame's resampling costs in deep grey matter edge sharpness.

The reconstruction U-Net works on a 1.2 mm isotropic grid aligned with B0; ``pedq-run`` samples
the local field into it and the network's chi back out, both by trilinear interpolation. TV and
TKD work on the scan's own grid. This separates the two sources of blur in PedQ-NET's edges:

* the truth itself, sampled into the frame and back (inside the V-SHARP-eroded mask): the best
  edge sharpness any network in this frame can be scored at, and the same with a cubic spline
  back instead of trilinear;
* the shipped network's chi brought back trilinearly (as ``pedq-run`` does) and by cubic spline.

Heads: validation seeds 2000-2003 (source protocol, TE 4.92 ms, SNR 100, ``lsq`` unwrapping,
V-SHARP in the true brain mask), as ``bench_refine.py``: a setting is being weighed, so the
held-out heads are not used. Scores as ``bench_pedqnet.py`` (whole truth brain mask).

``.venv/bin/python benchmarks/bench_frame.py [--subjects 4]`` -> "frame_resampling" section of
RESULTS.md and results/frame_resampling.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import VALIDATION_SEEDS, machine, model_provenance, update_section  # noqa: E402

from bench_pedqnet import heads, load_models  # noqa: E402
from bench_refine import KEYS, score  # noqa: E402

from pedq_deploy.training.data import subject_local_field  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args()
    found, pedq = load_models()
    note = machine()
    records = []
    for seed, age, tilt, s in heads(list(VALIDATION_SEEDS)[: args.subjects], snr=100.0, echo_time=4.92e-3):
        local, eroded = subject_local_field(s, unwrap="lsq")
        # the frame pedq-run builds (PedqModels.reconstruct), and the network's chi in it
        frame, net = pedq.reconstruct_in_frame(local, eroded, s.voxel_size, s.b0_direction)
        truth = frame.to_frame(np.where(eroded, s.chi, 0.0))
        outs = {"truth through the frame, trilinear back": frame.from_frame(truth),
                "truth through the frame, cubic back": frame.from_frame(truth, order=3),
                "PedQ-NET, trilinear back (pedq-run)": frame.from_frame(net),
                "PedQ-NET, cubic back": frame.from_frame(net, order=3)}
        # each map referenced to its mean where V-SHARP left values, as pedq-run's maps are
        rec = {"seed": seed, "age": age, "tilt_deg": tilt,
               "scores": {k: score(np.where(eroded, v - v[eroded].mean(), 0.0), s, eroded) for k, v in outs.items()}}
        records.append(rec)
        print(f"seed {seed} {age}: " + "; ".join(f"{k} edge {v['dgm_edge_sharpness']:.3f}" for k, v in rec["scores"].items()), flush=True)
    out = Path(__file__).with_name("results") / "frame_resampling.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"records": records, "machine": note}, indent=1))
    tmp.replace(out)
    update_section("frame_resampling", report(records, found, args, note))


def report(records, models_dir, args, note) -> str:
    lines = ["## What the B0-aligned frame's resampling costs in edge sharpness (validation heads)", "",
             f"Validation heads (seeds {records[0]['seed']}-{records[-1]['seed']}, not the held-out 1000-1009; neonates and infants "
             "alternating, tilts 0-30 deg), source protocol (TE 4.92 ms, SNR 100), least-squares unwrapping, V-SHARP in the true brain "
             "mask. The reconstruction network works in a 1.2 mm grid aligned with B0; the truth rows sample the true chi (inside the "
             "eroded mask) into that grid and back, the best any network in the frame can be scored at. Scores as in `bench_pedqnet.py` "
             "(whole truth brain mask; each map referenced to its eroded-mask mean). Mean ± SD over heads.",
             f"PedQ-NET: {model_provenance(models_dir)}.",
             f"Machine: {note}. Script: `benchmarks/bench_frame.py" + ("" if args.subjects == 4 else f" --subjects {args.subjects}")
             + "`; raw numbers in `benchmarks/results/frame_resampling.json`.", "",
             "| map | " + " | ".join(name for _, name in KEYS) + " |", "| --- |" + " --- |" * len(KEYS)]
    for m in records[0]["scores"]:
        vals = [[r["scores"][m][k] for r in records] for k, _ in KEYS]
        lines.append(f"| {m} | " + " | ".join(f"{np.mean(v):.4f} ± {np.std(v):.4f}" for v in vals) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
