"""Accuracy of the conventional pipeline on held-out phantoms: the baseline the networks must beat.

10 subjects (5 neonates, 5 infants; seeds 1000-1009, never used for training), tilts spread over
0-30 degrees, the source protocol (256x256x80, 0.78x0.78x2 mm, 3 T, TE 4.92 ms, SNR 100).
Each subject runs pedq-run's pipeline with TKD and TV on the classic mask, TV on the shipped masking
network's mask (where the models are found) and TV on the true brain mask (to separate masking from
inversion errors), with pedq-run's default unwrapping or ``--unwrap``. ``--pedq`` runs pedq-run as a
user does with the shipped networks instead: the masking network's mask, PedQ-NET without and with
``--refine`` (guided by the segmentation network's structures, and unguided), and TKD and TV on the same mask. Scores follow the QSM-CI
convention (whole truth brain mask, missing voxels count as zero); the QSM-CI scorer's own NRMSE
and XSIM are reported next to ours where qsm-ci is installed.

``.venv/bin/python benchmarks/bench_accuracy.py [--subjects N] [--unwrap M] [--pedq] [--section S]``; writes
the "accuracy" section (or S) of benchmarks/RESULTS.md and benchmarks/results/accuracy.json (S.json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import HELD_OUT_SEEDS, machine, update_section  # noqa: E402

from bench_pedqnet import heads  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.preprocess import UNWRAP_METHODS  # noqa: E402
from pedq_deploy.runtime import PipelineConfig, run_case  # noqa: E402
from pedq_deploy.runtime.pipeline import REFINE_LAMBDA, REFINE_WEIGHT  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, find_models  # noqa: E402

# name: (inversion, mask: "classic" | "network" (the shipped masking UNETR, where found) | "true", other PipelineConfig fields)
METHODS = {"TKD (classic mask)": ("tkd", "classic", {}), "TV (classic mask)": ("tv", "classic", {}), "TV (network mask)": ("tv", "network", {}),
           "TV (true mask)": ("tv", "true", {})}
# --pedq: pedq-run end to end with the shipped networks (its default, with --refine, and with --refine unguided by the
# segmentation) beside TKD and TV on the same network mask
REFINED = "PedQ-NET + guided TV refinement (network mask)"
PEDQ_METHODS = {"TKD (network mask)": ("tkd", "network", {}), "TV (network mask)": ("tv", "network", {}),
                "PedQ-NET (network mask)": ("pedq", "network", {}),
                REFINED: ("pedq", "network", {"refine_weight": REFINE_WEIGHT}),
                "PedQ-NET + TV refinement, unguided (network mask)": ("pedq", "network", {"refine_weight": REFINE_WEIGHT, "refine_edge_weight": 1.0})}
KEYS = ("nrmse", "hfen", "ssim", "xsim", "dgm_edge_sharpness", "dgm_mean_abs_error_ppm", "coverage")


def qsmci_scores(recon, truth, mask, labels):
    try:
        from qsm_ci.qsm_eval import score_arrays
    except ImportError:
        return None
    metrics, _ = score_arrays(recon, truth, mask.astype(np.uint8), kind="chi")
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k in ("nrmse", "xsim", "hfen", "coverage")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--unwrap", choices=UNWRAP_METHODS, default=PipelineConfig.unwrap,
                    help="phase unwrapping (default: pedq-run's)")
    ap.add_argument("--pedq", action="store_true",
                    help="pedq-run with the shipped networks (mask, PedQ-NET, PedQ-NET --refine) against TKD and TV on the network mask")
    ap.add_argument("--section", default="accuracy", help="RESULTS.md section; also names results/SECTION.json")
    args = ap.parse_args()
    found = find_models(None)
    models = PedqModels(found, backend="onnxruntime") if found is not None and (Path(found) / "mask.json").is_file() else None
    if args.pedq and models is None:
        sys.exit("--pedq needs the shipped models (mask, recon)")
    methods = {k: v for k, v in (PEDQ_METHODS if args.pedq else METHODS).items() if v[1] != "network" or models is not None}
    seeds = list(HELD_OUT_SEEDS)[: args.subjects]
    load_note = machine()
    records = []
    for seed, age, tilt, s in heads(seeds, snr=100.0):
        rec = {"seed": seed, "age": age, "tilt_deg": tilt, "methods": {}}
        for name, (inversion, mask, extra) in methods.items():
            cfg = PipelineConfig(echo_time=s.echo_time, field_strength=s.field_strength, inversion=inversion, unwrap=args.unwrap,
                                 masker="network" if mask == "network" else "classic", **extra)
            t0 = time.perf_counter()
            res = run_case(s.magnitude, s.phase, s.affine, s.voxel_size, cfg, mask=s.brain_mask if mask == "true" else None,
                           models=models if mask == "network" else None)
            elapsed = time.perf_counter() - t0
            score = M.score_qsm(res.qsm, s.chi, s.brain_mask, s.labels)
            score.pop("regions")
            score["local_field_nrmse"] = M.nrmse(res.local_field, s.local_field, s.brain_mask)
            score["mask_dice"] = M.dice(res.mask, s.brain_mask)
            score["seconds"] = elapsed
            score["qsm_ci"] = qsmci_scores(res.qsm, s.chi, s.brain_mask, s.labels)
            rec["methods"][name] = score
        records.append(rec)
        print(f"seed {seed} {age} tilt {tilt:.1f}: " + "; ".join(f"{n} NRMSE {m['nrmse']:.2f}" for n, m in rec["methods"].items()), flush=True)

    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / f"{args.section}.json").write_text(json.dumps(records, indent=1))
    if models is not None:
        models.close()

    def stat(name, key, age=None):
        vals = [r["methods"][name][key] for r in records if age is None or r["age"] == age]
        return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"

    unwrap_note = "" if args.section == "accuracy" else f", {args.unwrap} unwrapping"
    title = "pedq-run end to end with its networks, against TKD and TV on the same mask" if args.pedq else "Conventional QSM on held-out phantoms (the baseline)"
    lines = [f"## {title}{unwrap_note}", "",
             f"{len(records)} subjects (seeds {seeds[0]}-{seeds[-1]}; neonates and infants alternating; tilts {records[0]['tilt_deg']:.0f}-{records[-1]['tilt_deg']:.0f} deg), "
             "256x256x80, 0.78x0.78x2 mm, 3 T, TE 4.92 ms, SNR 100. `pedq-run`'s pipeline with its defaults "
             f"({args.unwrap} unwrapping, V-SHARP in the mask named; the network mask is the shipped masking UNETR's). Mean ± SD over subjects. "
             "Scored over the whole truth brain mask, uncovered voxels counted as zero; truth referenced to its brain mean, "
             "output to its eroded-mask mean. NRMSE/HFEN: ratios (0 best). Edge sharpness: 1 = as sharp as the truth."
             + (" PedQ-NET rows: `pedq-run` with the shipped models (masking network, reconstruction U-Net, segmentation UNETR), "
                f"without and with `--refine` (prior weight {REFINE_WEIGHT:g}, TV weight {REFINE_LAMBDA:g}, multiplied by "
                f"{PipelineConfig.refine_edge_weight:g} within {PipelineConfig.refine_edge_band} voxels of the segmented structures' boundaries"
                f"{', on the differences across them only' if PipelineConfig.refine_edge_mode == 'across' else ''}), "
                "and with `--refine --refine-edge-weight 1` (the same TV weight everywhere); each row runs the masking network itself."
                if args.pedq else ""),
             f"Machine: {load_note}. Script: `benchmarks/bench_accuracy.py --unwrap {args.unwrap}{' --pedq' if args.pedq else ''}"
             f"{'' if args.section == 'accuracy' else ' --section ' + args.section}`; raw numbers in `benchmarks/results/{args.section}.json`.", ""]
    for age in (None, "neonate", "infant"):
        lines += [f"**{'All subjects' if age is None else age.capitalize() + 's'}**", "",
                  "| method | NRMSE | HFEN | SSIM | XSIM | DGM edge sharpness | DGM mean abs error (ppm) | coverage | local field NRMSE | mask Dice |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name in methods:
            lines.append(f"| {name} | " + " | ".join(stat(name, k, age) for k in (*KEYS, "local_field_nrmse", "mask_dice")) + " |")
        lines.append("")
    ci = [r["methods"][next(iter(methods))]["qsm_ci"] for r in records]
    if all(ci):
        lines.append("QSM-CI scorer (qsm-ci " + __import__("importlib.metadata").metadata.version("qsm-ci") + ") on the same outputs, mean over subjects: " +
                     "; ".join(f"{name}: NRMSE {np.mean([r['methods'][name]['qsm_ci'].get('nrmse', np.nan) for r in records]):.3f}, "
                               f"XSIM {np.mean([r['methods'][name]['qsm_ci'].get('xsim', np.nan) for r in records]):.3f}" for name in methods) + ".")
    lines.append("Pipeline time per subject (in-process, mean): " + ", ".join(f"{n} {np.mean([r['methods'][n]['seconds'] for r in records]):.1f} s" for n in methods) + ".")
    update_section(args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
