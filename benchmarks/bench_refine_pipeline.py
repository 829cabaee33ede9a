"""The refinement's two weights as ``pedq-run`` runs (network mask), on validation heads.

``pedq-run --refine`` refines PedQ-NET's map by TV ADMM on the local field with the map as a
quadratic prior: ``min 1/2 |D chi - f|^2 + lambda |grad chi|_1 + alpha/2 |chi - chi_net|^2``.
``bench_refine.py`` chose alpha with lambda fixed at TV's 3e-4, on fields made in the true brain
mask. This sweeps both (lambda, alpha) on what a user gets: the shipped masking network's mask
(threshold 0.7), ``lsq`` unwrapping and V-SHARP in that mask, then the shipped U-Net. TV alone
is run at every lambda too, so what lambda does by itself is visible beside what the prior adds.

With ``--edge-weights``, each (lambda, alpha) is also run guided by the segmentation network's
labels of the network map (``pedq-run --refine-edge-weight``): the TV weight is multiplied by the
edge weight within ``--bands`` voxels of the segmented structures' boundaries
(``structure_edge_weight``), so the field can make the deep grey matter's edges there. With
``--across``, only on the differences across those boundaries (``structure_edge_weight(...,
across=True)``; TV keeps its weight along them), what ``pedq-run --refine-edge-mode across`` does.

Every head's mask, local field, network map and segmentation are computed once; each setting is
one TV run on them. Heads: the validation seeds 2000-2009 (neonates and infants alternating, tilts
0-30 deg), by default at the source protocol (TE 4.92 ms, SNR 100); the held-out 1000-1009 stay for
``bench_accuracy.py --pedq``.

``.venv/bin/python benchmarks/bench_refine_pipeline.py [--lambdas 5e-5,1e-4,2e-4,3e-4] [--weights 0.001,0.003,0.01,0.03]
[--edge-weights 0.1,0] [--bands 1,2] [--across] [--subjects 10] [--echo-time S] [--snr X] [--section S]`` -> "refine_pipeline" section of RESULTS.md and results/refine_pipeline.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import VALIDATION_SEEDS, machine, update_section  # noqa: E402

from bench_pedqnet import heads, load_models  # noqa: E402
from bench_refine import mean_table, score, timed_score  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.inversion import structure_edge_weight, tkd, tv_admm  # noqa: E402
from pedq_deploy.physics import phase_to_ppm  # noqa: E402
from pedq_deploy.preprocess import unwrap_phase, vsharp  # noqa: E402
from pedq_deploy.runtime.networks import MASK_THRESHOLD  # noqa: E402
from pedq_deploy.runtime.pipeline import PipelineConfig  # noqa: E402

KEYS = (("nrmse", "NRMSE"), ("nrmse_covered", "NRMSE, covered"), ("hfen", "HFEN"), ("xsim", "XSIM"),
        ("dgm_edge_sharpness", "DGM edge sharpness"), ("dgm_mean_abs_error_ppm", "DGM mean abs error (ppm)"),
        ("dgm_error_sd", "DGM error SD within structures (ppm)"))


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def pipeline_field(models, s, cfg: PipelineConfig):
    """``run_case``'s steps up to the local field, with the network mask: (brain, local field, eroded mask)."""
    brain = models.mask(s.magnitude, s.voxel_size, threshold=cfg.mask_threshold)
    unwrapped = unwrap_phase(s.phase, s.voxel_size, cfg.unwrap, mask=brain, magnitude=s.magnitude)
    local, eroded = vsharp(phase_to_ppm(unwrapped, s.echo_time, s.field_strength), brain, s.voxel_size, cfg.vsharp_radii,
                           cfg.vsharp_threshold)
    return brain, local, eroded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lambdas", default="5e-5,1e-4,2e-4,3e-4", help="TV weights to try, comma-separated")
    ap.add_argument("--weights", default="0.001,0.003,0.01,0.03", help="prior weights to try, comma-separated")
    ap.add_argument("--edge-weights", default="", help="guided refinement: TV weight factors on the segmented boundaries (none by default)")
    ap.add_argument("--bands", default="1", help="guided refinement: boundary half-widths in voxels, comma-separated")
    ap.add_argument("--across", action="store_true", help="guided refinement: weight only the differences across the boundaries")
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--echo-time", type=float, default=4.92e-3, help="seconds (default: the source protocol's)")
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--section", default="refine_pipeline", help="RESULTS.md section; also names results/SECTION.json")
    args = ap.parse_args()
    lambdas, weights = floats(args.lambdas), floats(args.weights)
    edge_weights, bands = floats(args.edge_weights), [int(b) for b in floats(args.bands)]
    found, models = load_models()
    note = machine()
    records = []
    for seed, age, tilt, s in heads(list(VALIDATION_SEEDS)[: args.subjects], snr=args.snr, echo_time=args.echo_time):
        cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion="pedq", mask_threshold=MASK_THRESHOLD)
        brain, local, eroded = pipeline_field(models, s, cfg)
        net = models.reconstruct(local, eroded, s.voxel_size, s.b0_direction)
        rec = {"seed": seed, "age": age, "tilt_deg": tilt, "mask_dice": M.dice(brain, s.brain_mask), "scores": {}, "seconds": {}}
        if edge_weights:  # as pedq-run segments: the network map, in the eroded mask
            seg = models.segment(net, eroded, s.voxel_size)
            rec["seg_dice"] = float(np.mean([M.dice(seg == k, s.labels == k) for k in np.unique(s.labels) if k]))
        rec["scores"]["PedQ-NET"] = score(net, s, eroded, KEYS)
        rec["scores"]["TKD"] = score(tkd(local, eroded, s.voxel_size, s.b0_direction), s, eroded, KEYS)
        for lam in lambdas:
            fit = partial(tv_admm, local, eroded, s.voxel_size, s.b0_direction, lam, None, cfg.tv_iterations)
            timed_score(rec, f"TV, lambda {lam:g}", fit, s, eroded, KEYS)
            for w in weights:
                timed_score(rec, f"refined, lambda {lam:g}, alpha {w:g}", lambda: fit(prior=net, prior_weight=w), s, eroded, KEYS)
                for ew in edge_weights:
                    for band in bands:
                        timed_score(rec, f"guided{' across' if args.across else ''}, lambda {lam:g}, alpha {w:g}, edge weight {ew:g}, band {band}",
                                    lambda: fit(prior=net, prior_weight=w, tv_weight=structure_edge_weight(seg, ew, band, args.across)),
                                    s, eroded, KEYS)
        records.append(rec)
        print(f"seed {seed} {age}: " + "; ".join(f"{k} {v['nrmse']:.3f}/{v['hfen']:.3f}/{v['dgm_edge_sharpness']:.2f}"
                                                 for k, v in rec["scores"].items()), flush=True)
    models.close()
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"{args.section}.json").write_text(json.dumps(records, indent=1))
    update_section(args.section, report(records, found, args, note))


def report(records, models_dir, args, note) -> str:
    methods = list(records[0]["scores"])
    defaults = ("--lambdas 5e-5,1e-4,2e-4,3e-4 --weights 0.001,0.003,0.01,0.03 --edge-weights - --bands 1 --subjects 10 --echo-time 0.00492 "
                "--snr 100").split()
    given = ["--lambdas", args.lambdas, "--weights", args.weights, "--edge-weights", args.edge_weights or "-", "--bands", args.bands,
             "--subjects", str(args.subjects), "--echo-time", f"{args.echo_time:g}", "--snr", f"{args.snr:g}"]
    flags = " ".join(f"{given[i]} {given[i + 1]}" for i in range(0, len(given), 2) if given[i + 1] != defaults[i + 1])
    flags += " --across" if args.across else ""
    flags += f" --section {args.section}" if args.section != "refine_pipeline" else ""
    lines = ["## The refinement's TV weight and prior weight as pedq-run runs (network mask), on validation heads", "",
             f"Validation heads (seeds {records[0]['seed']}-{records[-1]['seed']}, not the held-out 1000-1009; neonates and infants "
             "alternating, tilts 0-30 deg), 256x256x80, 0.78x0.78x2 mm, "
             f"TE {args.echo_time * 1e3:.2f} ms, SNR {args.snr:g} (the source protocol's: 4.92 ms, 100). Each head's mask is "
             f"the shipped masking network's (threshold {MASK_THRESHOLD:g}; mean Dice {np.mean([r['mask_dice'] for r in records]):.3f}), "
             "then `lsq` unwrapping, V-SHARP in it and the shipped U-Net, as `pedq-run` does. TKD (threshold 0.19) for reference. \"TV, lambda l\": `tv_admm` alone "
             "(60 iterations); \"refined, lambda l, alpha a\": the same with PedQ-NET's map as a prior of weight a, what "
             "`pedq-run --refine --refine-weight a --refine-lambda l` does; \"guided, ..., edge weight e, band b\": the same with the TV "
             "weight times e within b voxels of the boundaries of the segmentation network's structures (its labels of PedQ-NET's map"
             f"{'' if 'seg_dice' not in records[0] else ', mean Dice %.3f against the truth' % np.mean([r['seg_dice'] for r in records])}), what "
             "`--refine-edge-weight e --refine-edge-band b` adds; \"guided across\": the weight only on the differences across those boundaries "
             "(or within b - 1 voxels of one, along the same axis), TV keeping its weight along them (`--refine-edge-mode across`). Scored over the truth brain mask as in `bench_accuracy.py "
             f"--pedq`; mean over heads. \"DGM error SD within structures\": the SD of (map - truth) inside each structure, mean over "
             f"structures (noise that a structure's mean value averages out). Models: `{Path(models_dir).name}`. Machine: {note}. Script: "
             f"`benchmarks/bench_refine_pipeline.py{' ' + flags if flags else ''}`; raw numbers in `benchmarks/results/{args.section}.json`.", ""]
    for age in (None, "neonate", "infant"):
        rows = [r for r in records if age is None or r["age"] == age]
        lines += mean_table(f"**{'All heads' if age is None else age.capitalize() + 's'}** ({len(rows)})", rows, methods, KEYS)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
