"""Does the QC map catch what it should? Data consistency with the right and with wrong parameters.

Held-out phantoms (seeds 1000-1003: neonates and infants, tilt 15 deg), two protocols: the source
study's (one echo, TE 4.92 ms, SNR 100) and a 4-echo scan (TE 5/10/15/20 ms, SNR 100 at the first
echo). For each: the pipeline (true brain mask, so the mask scenario is the only mask change) with
TKD, TV and PedQ-NET (the shipped models), given
  * the right parameters,
  * a B0 direction 25 degrees off,
  * the echo time(s) halved and doubled,
  * a brain mask dilated by 5 mm (non-brain taken in),
  * (4 echoes) the files of echoes 2 and 4 swapped.
Reports the median misfit in noise units and which flags were raised: M (chi does not explain the
field), B (the field's dipole cone points elsewhere than the given B0), E (phase not linear in TE).

``.venv/bin/python benchmarks/bench_qc.py [--subjects N]`` -> benchmarks/results/qc.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, write_section  # noqa: E402

from pedq_deploy.config import PipelineConfig  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.postprocess import QC_THRESHOLDS  # noqa: E402
from pedq_deploy.runtime.networks import PedqModels, find_models  # noqa: E402
from pedq_deploy.runtime.pipeline import run_case  # noqa: E402

PROTOCOLS = {"one echo, TE 4.92 ms": (4.92e-3,), "4 echoes, TE 5-20 ms": (5e-3, 10e-3, 15e-3, 20e-3)}


def rotated(b: np.ndarray, deg: float) -> np.ndarray:
    axis = np.cross(b, [1.0, 0.0, 0.0] if abs(b[0]) < 0.9 else [0.0, 1.0, 0.0])
    axis /= np.linalg.norm(axis)
    t = np.deg2rad(deg)
    return b * np.cos(t) + np.cross(axis, b) * np.sin(t) + axis * (axis @ b) * (1 - np.cos(t))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args()
    found = find_models(None)
    models = PedqModels(found, backend="onnxruntime") if found is not None else None
    methods = ["tkd", "tv"] + (["pedq"] if models is not None else [])
    rows = []
    for seed in range(1000, 1000 + args.subjects):
        age = "neonate" if seed % 2 == 0 else "infant"
        for proto, tes in PROTOCOLS.items():
            s = make_subject(seed=seed, age=age, tilt_deg=15.0, echo_time=tes if len(tes) > 1 else tes[0], snr=100.0)
            v = s.voxel_size
            dilated = ndi.binary_dilation(s.brain_mask, structure=np.ones((3, 3, 3)), iterations=int(round(5.0 / min(v))))
            scenarios = {
                "right": dict(),
                "B0 25 deg off": dict(b0_direction=tuple(rotated(s.b0_direction, 25.0))),
                "TE x0.5": dict(echo_time=tuple(0.5 * t for t in tes)),
                "TE x2": dict(echo_time=tuple(2.0 * t for t in tes)),
                "mask +5 mm": dict(mask=dilated),
            }
            if len(tes) > 1:
                scenarios["echo files 2 and 4 swapped"] = dict(order=[0, 3, 2, 1])
            for name, change in scenarios.items():
                for method in methods:
                    te = change.get("echo_time", tes)
                    cfg = PipelineConfig(
                        echo_time=te if len(te) > 1 else te[0],
                        field_strength=3.0,
                        inversion=method,
                        masker="classic",
                        b0_direction=change.get("b0_direction"),
                    )
                    order = change.get("order", slice(None))
                    mag, ph = (s.magnitude[..., order], s.phase[..., order]) if len(tes) > 1 else (s.magnitude, s.phase)
                    r = run_case(
                        mag, ph, s.affine, v, cfg, mask=change.get("mask", s.brain_mask), models=models if method == "pedq" else None
                    )
                    qc = r.info["qc"]
                    rows.append(
                        {
                            "seed": seed,
                            "age": age,
                            "protocol": proto,
                            "scenario": name,
                            "method": method,
                            "ratio": qc["misfit_noise_ratio"],
                            "above3": qc["misfit_fraction_above_3"],
                            "b0_check": qc.get("b0_check"),
                            "single_echo_fraction": qc.get("single_echo_fraction"),
                            "flags": "".join(
                                k
                                for k, word in (("M", "does not explain"), ("B", "B0 direction"), ("E", "not linear in TE"))
                                if any(word in f for f in qc["flags"])
                            ),
                        }
                    )
                    print(
                        f"{seed} {age} {proto} {name} {method}: ratio {qc['misfit_noise_ratio']:.2f} flags {rows[-1]['flags'] or '-'} "
                        f"b0 {qc.get('b0_check')}",
                        flush=True,
                    )
    out = Path(__file__).parent / "results" / "qc.json"
    out.write_text(json.dumps(rows, indent=1))
    lines = [
        "## QC: does the data-consistency map catch wrong parameters?",
        "",
        f"{args.subjects} held-out phantoms (seeds 1000-{999 + args.subjects}, neonates and infants, tilt 15 deg), SNR 100 at the "
        "first echo, true brain mask except in the mask scenario. The summary is the median over the eroded mask of "
        "|D*chi - y| divided by the noise the magnitude predicts there (1 = chi explains the field down to the noise). "
        f"Flags: M when that median exceeds {QC_THRESHOLDS['misfit_noise_ratio']} or over {QC_THRESHOLDS['misfit_fraction_above_3']:.0%} "
        f"of the mask misfits by 3x the noise; B when the field's own dipole cone (least spectral energy) lies over "
        f"{QC_THRESHOLDS['b0_angle_deg']:.0f} deg from the given B0 with {QC_THRESHOLDS['b0_cone_energy_ratio']}x less energy; E when the "
        f"phase of over {QC_THRESHOLDS['single_echo_fraction']:.0%} of the brain is not linear in TE. Cells: mean ratio over subjects, "
        "then the flags each subject raised (neonate / infant ...).",
        "Machine: " + machine() + ". Script: `benchmarks/bench_qc.py`; raw numbers in `benchmarks/results/qc.json`.",
        "",
    ]
    for proto in PROTOCOLS:
        lines += [f"**{proto}**", "", "| scenario | " + " | ".join(methods) + " |", "| --- |" + " ---: |" * len(methods)]
        for name in dict.fromkeys(r["scenario"] for r in rows if r["protocol"] == proto):
            cells = []
            for method in methods:
                sel = [r for r in rows if r["protocol"] == proto and r["scenario"] == name and r["method"] == method]
                cells.append(f"{np.mean([r['ratio'] for r in sel]):.2f} ({' / '.join(r['flags'] or '-' for r in sel)})")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    write_section("qc", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
