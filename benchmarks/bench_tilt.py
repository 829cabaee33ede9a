"""Does the reconstruction network work on tilted heads? Tilts 0, 10, 20, 30 degrees.

A pedq-train run (kind recon, tv or joint) is exported with pedq-export and run through the
deployed runtime (onnxruntime; the local field rotated into the B0-aligned frame and chi rotated
back) on held-out subjects at the source protocol. Same V-SHARP local field (true brain mask) for
every method: TKD and iterative TV with the true B0, the network in the frame of the true B0, and
the network in the frame of B0 = z (what a network without the rotation would assume: wrong
whenever the head is tilted). If the frame works, the network's error does not grow with tilt and
the B0 = z variant falls behind as the tilt grows.

``.venv/bin/python benchmarks/bench_tilt.py RUN_DIR``; writes benchmarks/results/tilt.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import describe_chain, machine, training_chain, write_section  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.export import export_checkpoint  # noqa: E402
from pedq_deploy.inversion import tkd, tv_admm  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.physics import forward_field, phase_to_ppm  # noqa: E402
from pedq_deploy.preprocess import combine_echoes, laplacian_unwrap, vsharp  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels  # noqa: E402

SUBJECTS = [(1000, "neonate"), (1001, "infant"), (1002, "neonate"), (1003, "infant")]
TILTS = (0.0, 10.0, 20.0, 30.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="pedq-train run folder, or a folder of exported models (recon.json + recon.onnx)")
    ap.add_argument(
        "--echo-time",
        type=str,
        default="4.92e-3",
        help="seconds (default: the source protocol's); several, comma-separated, for a multi-echo scan (combined by combine_echoes)",
    )
    ap.add_argument("--snr", type=float, default=100.0)
    ap.add_argument("--subjects", type=int, default=len(SUBJECTS))
    ap.add_argument("--tilts", type=str, default=",".join(f"{t:g}" for t in TILTS))
    ap.add_argument("--section", default="tilt")
    args = ap.parse_args()
    subjects = SUBJECTS[: args.subjects]
    tilts = tuple(float(t) for t in args.tilts.split(","))
    tes = tuple(float(t) for t in args.echo_time.split(","))
    te_text = "/".join(f"{t * 1e3:.2f}" for t in tes) + " ms" + (f" ({len(tes)} echoes, combined)" if len(tes) > 1 else "")
    note = machine()
    if (Path(args.run) / "recon.json").is_file():  # exported models: their manifest says how they were trained
        models_dir = Path(args.run)
        training = json.loads((models_dir / "recon.json").read_text()).get("training") or {}
        trained = describe_chain(training_chain(training, "recon")) if training else "training record missing"
    else:
        models_dir = Path(tempfile.mkdtemp(prefix="pedq-tilt-"))
        export_checkpoint(args.run, models_dir)
        trained = f"{sum(1 for _ in open(Path(args.run) / 'train_log.csv')) - 1} steps; config in its config.json"
    models = PedqModels(models_dir, backend="onnxruntime")
    res = {t: {"TKD": [], "TV (iterative)": [], "network, B0 frame": [], "network, B0 = z assumed": []} for t in tilts}
    for seed, age in subjects:
        for tilt in tilts:
            s = make_subject(seed=seed, age=age, tilt_deg=tilt, echo_time=tes if len(tes) > 1 else tes[0], snr=args.snr)
            if len(tes) > 1:
                total = combine_echoes(s.phase, s.magnitude, tes, s.field_strength, s.voxel_size, mask=s.brain_mask)[0]
            else:
                total = phase_to_ppm(laplacian_unwrap(s.phase, s.voxel_size), s.echo_time, s.field_strength)
            local, eroded = vsharp(total, s.brain_mask, s.voxel_size)
            outs = {
                "TKD": tkd(local, eroded, s.voxel_size, s.b0_direction),
                "TV (iterative)": tv_admm(local, eroded, s.voxel_size, s.b0_direction, 3e-4, None, 60),
                "network, B0 frame": models.reconstruct(local, eroded, s.voxel_size, s.b0_direction),
                "network, B0 = z assumed": models.reconstruct(local, eroded, s.voxel_size, (0.0, 0.0, 1.0)),
            }
            true_local = np.where(eroded, s.local_field - s.local_field[eroded].mean(), 0.0)
            for name, chi in outs.items():
                # data consistency with the true B0: the field of the output against the noise-free local field
                f = forward_field(np.where(eroded, chi, 0.0), s.voxel_size, s.b0_direction)
                f = np.where(eroded, f - f[eroded].mean(), 0.0)
                resid = float(np.linalg.norm(f - true_local) / np.linalg.norm(true_local))
                chi_e = np.where(eroded, chi - chi[eroded].mean(), 0.0)
                truth_e = np.where(eroded, s.chi - s.chi[eroded].mean(), 0.0)
                res[tilt][name].append(
                    (
                        M.nrmse(chi, s.chi, s.brain_mask),
                        M.nrmse(chi_e, truth_e, eroded),
                        M.hfen(chi, s.chi, s.brain_mask),
                        M.xsim(chi, s.chi, s.brain_mask),
                        resid,
                    )
                )
            print(seed, age, tilt, {k: round(v[-1][0], 3) for k, v in res[tilt].items()}, flush=True)
    models.close()
    val_path = Path(args.run) / "val_log.csv"
    val = list(csv.reader(open(val_path))) if val_path.is_file() else []
    lines = [
        f"## Tilted heads: the reconstruction network in the B0-aligned frame, TE {te_text}, SNR {args.snr:g}",
        "",
        f"Models `{args.run}` ({trained}), run through the deployed "
        f"onnxruntime path. {len(subjects)} held-out subjects (seeds {subjects[0][0]}-{subjects[-1][0]}, neonates and infants) at each tilt, "
        f"source protocol grid, TE {te_text}, SNR {args.snr:g}; same V-SHARP local field (true brain mask) for every method. Mean over subjects; whole-mask scores. "
        f"Machine: {note}. Script: `benchmarks/bench_tilt.py`.",
        "",
        "Field residual: the field of the output (true B0) against the noise-free local field inside the eroded mask, relative "
        "(0 = the output explains the field exactly); it isolates whether the dipole model was right, which is what the tilt changes.",
        "",
        "| tilt (deg) | method | NRMSE | NRMSE, covered region | HFEN | XSIM | field residual |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in tilts:
        for name, rows in res[t].items():
            a = np.array(rows).mean(0)
            lines.append(f"| {t:g} | {name} | {a[0]:.3f} | {a[1]:.3f} | {a[2]:.3f} | {a[3]:.3f} | {a[4]:.3f} |")
    for col, label in ((1, "NRMSE in the covered region"), (4, "field residual")):
        net = {t: np.array(res[t]["network, B0 frame"]).mean(0)[col] for t in tilts}
        wrong = {t: np.array(res[t]["network, B0 = z assumed"]).mean(0)[col] for t in tilts}
        lines += [
            "",
            f"Network {label} at {tilts[-1]:g} deg over that at {tilts[0]:g} deg: {net[tilts[-1]] / net[tilts[0]]:.3f} in the B0 frame, "
            f"{wrong[tilts[-1]] / wrong[tilts[0]]:.3f} with B0 = z assumed.",
        ]
    if val:
        lines += ["", f"Validation on held-out crops during training (seeds 2000-2001), last row: {dict(zip(val[0], val[-1]))}."]
    write_section(args.section, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
