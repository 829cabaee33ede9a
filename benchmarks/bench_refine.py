"""Choosing the refinement's prior weight (``pedq-run --refine``) on validation heads, not held-out ones.

PedQ-NET's map refined by TV ADMM on the same local field with the map as a quadratic prior
(``tv_admm(..., prior=, prior_weight=alpha)``): where the squared dipole kernel is small against
alpha (the magic-angle cone) the network decides, elsewhere the field and TV do. Small alpha tends
to TV, large alpha to the network. This sweeps alpha and scores each against the network alone and
TV alone, at the source protocol (TE 4.92 ms, SNR 100) and at a long echo time (TE 20 ms, SNR 200).

Heads: seeds 2000-2003 (neonates and infants alternating, tilts 0-30 deg) on the source grid,
``lsq`` unwrapping and V-SHARP in the true brain mask, as in ``bench_pedqnet.py``. 2000-2001 are
the training runs' validation heads (used to pick checkpoints, never in a gradient step),
2002-2003 were used by nothing; the held-out heads 1000-1009 stay for ``bench_pedqnet.py``.

``.venv/bin/python benchmarks/bench_refine.py [--weights 0.01,0.03,0.1,0.3] [--subjects 4]``
-> "refine_weight" section of RESULTS.md and results/refine_weight.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import VALIDATION_SEEDS, machine, update_section  # noqa: E402

from bench_pedqnet import covered_nrmse, heads, load_models  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.inversion import tv_admm  # noqa: E402
from pedq_deploy.training.data import subject_local_field  # noqa: E402

SETTINGS = ((4.92e-3, 100.0), (20e-3, 200.0))
KEYS = (("nrmse", "NRMSE"), ("nrmse_covered", "NRMSE, covered"), ("hfen", "HFEN"), ("dgm_edge_sharpness", "DGM edge sharpness"),
        ("dgm_mean_abs_error_ppm", "DGM mean abs error (ppm)"))


def dgm_error_sd(chi, s, eroded) -> float:
    """Noise inside the deep grey matter: the SD of (map - truth) within each labelled structure
    (where the map has values), mean over structures, in ppm. A per-structure mean error can be
    small while this is large (the noise averages out over the structure; the picture does not)."""
    sds = [float((chi - s.chi)[(s.labels == k) & eroded].std()) for k in np.unique(s.labels) if k and ((s.labels == k) & eroded).any()]
    return float(np.mean(sds))


def score(chi, s, eroded, keys=KEYS) -> dict:
    """The ``keys`` (pairs: score_qsm's name, "nrmse_covered" or "dgm_error_sd", column title) of one map against the truth."""
    q = M.score_qsm(chi, s.chi, s.brain_mask, s.labels)
    q["nrmse_covered"] = covered_nrmse(chi, s.chi, eroded)
    if any(k == "dgm_error_sd" for k, _ in keys):
        q["dgm_error_sd"] = dgm_error_sd(chi, s, eroded)
    return {k: q[k] for k, _ in keys}


def timed_score(rec: dict, name: str, invert, s, eroded, keys=KEYS) -> None:
    """Run ``invert()`` (one map), and record its seconds (the inversion alone, not the scoring)
    and its scores (:func:`score`) under ``name`` in ``rec``."""
    t0 = time.perf_counter()
    chi = invert()
    rec["seconds"][name] = time.perf_counter() - t0
    rec["scores"][name] = score(chi, s, eroded, keys)


def mean_table(title: str, rows, methods, keys=KEYS) -> list[str]:
    """``title``, then a table of each method's mean scores over ``rows`` (records with "scores" and
    "seconds" per method) and its mean seconds, then a blank line."""
    lines = [title, "", "| method | " + " | ".join(k[1] for k in keys) + " | seconds |", "| --- |" + " ---: |" * (len(keys) + 1)]
    for m in methods:
        secs = [r["seconds"][m] for r in rows if m in r["seconds"]]
        lines.append(f"| {m} | " + " | ".join(f"{np.mean([r['scores'][m][k] for r in rows]):.4f}" for k, _ in keys)
                     + f" | {f'{np.mean(secs):.1f}' if secs else '-'} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", default="0.01,0.03,0.1,0.3", help="prior weights to try, comma-separated")
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    found, pedq = load_models()
    note = machine()
    records = []
    for te, snr in SETTINGS:
        for seed, age, tilt, s in heads(list(VALIDATION_SEEDS)[: args.subjects], snr=snr, echo_time=te):
            local, eroded = subject_local_field(s, unwrap="lsq")
            net = pedq.reconstruct(local, eroded, s.voxel_size, s.b0_direction)
            rec = {"seed": seed, "age": age, "tilt_deg": tilt, "echo_time": te, "snr": snr, "scores": {}, "seconds": {}}
            rec["scores"]["PedQ-NET"] = score(net, s, eroded)
            timed_score(rec, "TV", lambda: tv_admm(local, eroded, s.voxel_size, s.b0_direction, 3e-4, None, 60), s, eroded)
            for w in weights:
                timed_score(rec, f"refined {w:g}", lambda: tv_admm(local, eroded, s.voxel_size, s.b0_direction, 3e-4, None, 60, prior=net,
                                                                   prior_weight=w), s, eroded)
            records.append(rec)
            print(f"TE {te * 1e3:.0f} ms seed {seed}: " + "; ".join(f"{k} {v['nrmse']:.4f}/{v['dgm_edge_sharpness']:.2f}"
                                                                   for k, v in rec["scores"].items()), flush=True)
    pedq.close()
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "refine_weight.json").write_text(json.dumps(records, indent=1))
    update_section("refine_weight", report(records, found, args, note))


def report(records, models_dir, args, note) -> str:
    methods = list(records[0]["scores"])
    lines = ["## Refinement of PedQ-NET's map by TV with it as a prior: the weight, on validation heads", "",
             f"Validation heads (seeds {records[0]['seed']}-{records[-1]['seed']}, not the held-out 1000-1009; neonates and infants "
             "alternating, tilts 0-30 deg), source grid, `lsq` unwrapping, V-SHARP in the true brain mask. \"refined a\": "
             "`tv_admm(field, lambda 3e-4, 60 iterations, prior=PedQ-NET's map, prior_weight=a)`, what `pedq-run --refine "
             "--refine-weight a` does. Scores as in the issue 6 sections; mean over heads. "
             f"Models: `{Path(models_dir).name}`. Machine: {note}. Script: `benchmarks/bench_refine.py"
             f"{'' if args.weights == '0.01,0.03,0.1,0.3' else ' --weights ' + args.weights}"
             f"{'' if args.subjects == 4 else f' --subjects {args.subjects}'}`; raw numbers in `benchmarks/results/refine_weight.json`.", ""]
    for te, snr in SETTINGS:
        rows = [r for r in records if r["echo_time"] == te and r["snr"] == snr]
        lines += mean_table(f"**TE {te * 1e3:.2f} ms, SNR {snr:g}**", rows, methods)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
