"""The ``recon_amplitude_ref`` at which a warm-started, amplitude-normalised U-Net starts unbiased.

Wrapping a trained U-Net in the amplitude normalisation (``recon_amplitude_ref: r``) keeps its
weights but changes its output's gain by a factor it has never learnt. This measures that gain on
the validation heads (seeds 2000-2001, never the benchmark's 1000-1009): the slope of the output
on the true chi inside the V-SHARP-eroded mask, noiseless, source protocol grid, pooled over the
heads. The ``r`` that makes the pooled slope 1 is ``r * slope``. Start a training run from it.

    pedq-train joint --config C --out RUN --init-from export --steps 1   # C: lr 0, recon_amplitude_ref 1
    pedq-export RUN --outdir RUN_EXPORT
    .venv/bin/python scripts/calibrate_amplitude_ref.py RUN_EXPORT
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pedq_deploy.phantom import make_subject
from pedq_deploy.runtime.networks import PedqModels
from pedq_deploy.training.data import subject_local_field

HEADS = ((2000, "neonate"), (2001, "infant"), (2000, "infant"), (2001, "neonate"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", help="an export whose recon.json was trained with recon_amplitude_ref > 0")
    args = ap.parse_args()
    try:
        ref = float(json.loads(Path(args.models, "recon.json").read_text())["training"]["config"]["recon_amplitude_ref"])
    except (OSError, KeyError, ValueError) as exc:
        sys.exit(f"calibrate_amplitude_ref: cannot read recon_amplitude_ref from {args.models}/recon.json: {exc}")
    if not ref > 0:
        sys.exit(f"calibrate_amplitude_ref: {args.models}/recon.json has no amplitude normalisation (recon_amplitude_ref {ref})")
    net = PedqModels(args.models, backend="onnxruntime")
    num = den = 0.0
    for seed, age in HEADS:
        s = make_subject(seed=seed, age=age, snr=float("inf"))
        local, er = subject_local_field(s)
        out = net.reconstruct(local, er, s.voxel_size, s.b0_direction)
        o, t = out[er] - out[er].mean(), s.chi[er] - s.chi[er].mean()
        num, den = num + float((o * t).sum()), den + float((t * t).sum())
        print(f"seed {seed} {age}: slope {(o * t).sum() / (t * t).sum():.4f}, correlation {np.corrcoef(o, t)[0, 1]:.3f}", flush=True)
    net.close()
    print(f"pooled slope {num / den:.4f} at recon_amplitude_ref {ref:g}: use recon_amplitude_ref {ref * num / den:.4g}")


if __name__ == "__main__":
    main()
