"""Where the reconstruction network's error comes from: noise, V-SHARP, or the network itself.

Held-out heads (seeds 1000-1003, neonates and infants alternating, tilts 0/10/20/30 degrees),
source protocol grid.

* Linearity. The dipole inversion is linear: a field ``a`` times larger has a chi ``a`` times
  larger. Each method is given ``a`` x the true local field (no noise, no V-SHARP error, inside the
  V-SHARP-eroded mask), and its output divided by ``a`` is compared with the truth: its amplitude
  (SD over the eroded mask relative to the truth's), the correlation, and the NRMSE there. A
  linear method gives the same row for every ``a``. TKD is the linear reference.
* Error sources. The network and iterative TV on: the true local field without noise; the
  V-SHARP local field without noise; the V-SHARP local field at SNR 100 (the source protocol).

``.venv/bin/python benchmarks/bench_linearity.py [--models DIR[,DIR...]]``; writes the
"linearity" section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, model_provenance, update_section  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.inversion import tkd, tv_admm  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels  # noqa: E402
from pedq_deploy.training.data import subject_local_field  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = (1000, 1001, 1002, 1003)
SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def covered(out, truth, er):
    """Amplitude ratio, correlation and NRMSE of ``out`` against ``truth`` inside ``er`` (both mean-referenced there)."""
    o = out[er] - out[er].mean()
    t = truth[er] - truth[er].mean()
    return o.std() / t.std(), float(np.corrcoef(o, t)[0, 1]), float(np.linalg.norm(o - t) / np.linalg.norm(t))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=str(REPO / "export"), help="comma-separated model folders (recon.onnx each)")
    ap.add_argument("--subjects", type=int, default=4, help="the first N of the held-out seeds 1000-1003 (each takes minutes)")
    args = ap.parse_args()
    folders = [Path(p) for p in args.models.split(",")]
    nets = {(f.name if f.resolve() != (REPO / "export").resolve() else "PedQ-NET (shipped)"): PedqModels(f, backend="onnxruntime")
            for f in folders}
    note = machine()
    lin = {}  # (method, age, a) -> list of (amplitude, corr, nrmse)
    src = {}  # (method, age, input) -> list of (nrmse covered, edge)
    seeds = SEEDS[: args.subjects]
    for i, seed in enumerate(seeds):
        age = "neonate" if i % 2 == 0 else "infant"
        tilt = 10.0 * i
        clean = make_subject(seed=seed, age=age, tilt_deg=tilt, snr=float("inf"))
        noisy = make_subject(seed=seed, age=age, tilt_deg=tilt, snr=100.0)
        lf_clean, er = subject_local_field(clean)
        lf_noisy, er_noisy = subject_local_field(noisy)
        true_lf = np.where(er, clean.local_field, 0.0)
        args_ = (clean.voxel_size, clean.b0_direction)
        methods = {name: (lambda f, m, n=n: n.reconstruct(f, m, *args_)) for name, n in nets.items()}
        methods["TKD"] = lambda f, m: tkd(f, m, *args_)
        for name, fn in methods.items():
            for a in SCALES:
                lin.setdefault((name, age, a), []).append(covered(fn(a * true_lf, er) / a, clean.chi, er))
        methods["TV (iterative)"] = lambda f, m: tv_admm(f, m, *args_, 3e-4, None, 60)
        for name, fn in methods.items():
            if name == "TKD":
                continue
            for label, f, m in (("true local field, no noise", true_lf, er), ("V-SHARP, no noise", lf_clean, er),
                                ("V-SHARP, SNR 100", lf_noisy, er_noisy)):
                out = fn(f, m)
                q = M.score_qsm(out, clean.chi, clean.brain_mask, clean.labels)
                src.setdefault((name, age, label), []).append((covered(out, clean.chi, m)[2], q["dgm_edge_sharpness"]))
        print(f"seed {seed} {age}: " + "; ".join(f"{k[0]} x{k[2]:g} amplitude {v[-1][0]:.2f}" for k, v in lin.items()
                                                  if k[1] == age and k[2] in (0.25, 4.0)), flush=True)
    for n in nets.values():
        n.close()
    update_section("linearity", report(lin, src, nets, folders, seeds, args, note))


def report(lin, src, nets, folders, seeds, args, note) -> str:
    provenance = [f"{name}: {model_provenance(f)}" for name, f in zip(nets, folders)]
    lines = ["## Where the network's error comes from: linearity, noise and V-SHARP (issue 6)", "",
             f"{len(seeds)} held-out heads (seeds {seeds[0]}-{seeds[-1]}, neonates and infants alternating, tilts {', '.join(f'{10 * i}' for i in range(len(seeds)))} deg), "
             "source protocol grid (256x256x80, 0.78x0.78x2 mm, TE 4.92 ms). All scores inside the V-SHARP-eroded mask, output and "
             "truth each referenced to their mean there; mean over the heads of each age. " + " ".join(p + "." for p in provenance),
             f"Machine: {note}. Script: `benchmarks/bench_linearity.py{'' if len(folders) == 1 else ' --models ' + ','.join(map(str, folders))}"
             f"{'' if len(seeds) == len(SEEDS) else f' --subjects {len(seeds)}'}`.", "",
             "**Linearity.** Input: `a` x the true local field (no noise, no V-SHARP error). Output divided by `a`, against the truth: "
             "amplitude (SD relative to the truth's), correlation, NRMSE. A linear inversion gives the same numbers at every `a`.", "",
             "| method | age | " + " | ".join(f"a = {a:g}" for a in SCALES) + " |", "| --- | --- |" + " --- |" * len(SCALES)]
    for name in dict.fromkeys(k[0] for k in lin):
        for age in ("neonate", "infant"):
            cells = []
            for a in SCALES:
                v = np.mean(lin[(name, age, a)], axis=0)
                cells.append(f"amp. {v[0]:.2f}, r {v[1]:.2f}, NRMSE {v[2]:.2f}")
            lines.append(f"| {name} | {age} | " + " | ".join(cells) + " |")
    inputs = ("true local field, no noise", "V-SHARP, no noise", "V-SHARP, SNR 100")
    lines += ["", "**Error sources.** NRMSE in the eroded mask / DGM edge sharpness, by input.", "",
              "| method | age | " + " | ".join(inputs) + " |", "| --- | --- |" + " --- |" * len(inputs)]
    for name in dict.fromkeys(k[0] for k in src):
        for age in ("neonate", "infant"):
            cells = [f"{np.mean([x[0] for x in src[(name, age, lab)]]):.3f} / {np.mean([x[1] for x in src[(name, age, lab)]]):.2f}"
                     for lab in inputs]
            lines.append(f"| {name} | {age} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
