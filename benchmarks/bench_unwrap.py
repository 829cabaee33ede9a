"""Phase unwrapping at short and long echo times: the local field error each unwrapper leaves.

Held-out phantoms (seeds 1000-1003: neonates and infants, tilts 0-30 deg) on the source protocol's
grid (256x256x80, 0.78x0.78x2 mm, 3 T), scanned once per echo time (4.92, 10 and 20 ms; single
echo, SNR 100 each). Each unwrapper's phase goes through the same V-SHARP in the true brain mask;
the error is the NRMSE of that local field against the true local field inside the eroded mask,
both referenced to their mean there (as ``bench_echoes.py``). The reference row is V-SHARP on the
noise-free true total field: what background removal leaves at best.

Unwrappers: ours (Laplacian after Schofield & Zhu, least squares on wrapped differences, the Cython
quality-guided one) and scikit-image's ``unwrap_phase`` (quality-guided, masked to the brain), the
peer a user would pick. Times: median of 3 per head (scikit-image: 1), on the same phase, in this run.

``.venv/bin/python benchmarks/bench_unwrap.py [--subjects N]`` -> benchmarks/results/unwrap_te.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, median_time, write_section  # noqa: E402
from bench_echoes import error  # noqa: E402  (the same local field error as the multi-echo benchmark)

from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.physics import phase_to_ppm  # noqa: E402
from pedq_deploy.preprocess import unwrap_phase  # noqa: E402

TES = (4.92e-3, 10e-3, 20e-3)
METHODS = ("laplacian", "lsq", "quality", "scikit-image")


def unwrap(method, s):
    if method == "scikit-image":
        from skimage.restoration import unwrap_phase as sk_unwrap

        out = sk_unwrap(np.ma.masked_array(s.phase, ~s.brain_mask))
        return np.asarray(out.filled(0.0) if np.ma.isMaskedArray(out) else out, np.float32)
    return unwrap_phase(s.phase, s.voxel_size, method, mask=s.brain_mask, magnitude=s.magnitude)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=4)
    args = ap.parse_args()
    note = machine()
    seeds = range(1000, 1000 + args.subjects)
    tilts = np.linspace(0.0, 30.0, args.subjects)
    errors: dict[tuple[str, float, str], list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed, tilt in zip(seeds, tilts):
        age = "neonate" if seed % 2 == 0 else "infant"
        for te in TES:
            s = make_subject(seed=seed, age=age, tilt_deg=float(tilt), echo_time=te, snr=100.0)
            row = {}
            for method in METHODS:
                t, u = median_time(lambda: unwrap(method, s), 1 if method == "scikit-image" else 3)
                seconds.setdefault(method, []).append(t)
                row[method] = error(phase_to_ppm(u, te, s.field_strength), s)
            row["reference: noise-free true total field"] = error(s.total_field, s)
            for k, v in row.items():
                errors.setdefault((age, te, k), []).append(v)
            print(
                f"seed {seed} {age} tilt {tilt:.0f} TE {te * 1e3:.2f} ms: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True
            )
    names = list(METHODS) + ["reference: noise-free true total field"]
    ages = [a for a in ("neonate", "infant") if any(k[0] == a for k in errors)]
    cols = [(a, te) for a in ages for te in TES]
    lap = np.asarray(seconds["laplacian"])
    lines = [
        "## Unwrapping at long echo times: the local field error each unwrapper leaves",
        "",
        f"{args.subjects} held-out phantoms (seeds 1000-{999 + args.subjects}; neonates and infants alternating; tilts 0-30 deg), "
        "source-protocol grid (256x256x80, 0.78x0.78x2 mm, 3 T), one single-echo scan per echo time, SNR 100. NRMSE of V-SHARP's "
        "local field (true brain mask) against the true local field in the eroded mask, both referenced to their mean there; mean "
        "over the subjects of each age (lower is better). `laplacian`: Schofield & Zhu (the sine of the neighbour differences); "
        "`lsq`: least squares on the wrapped differences (Ghiglia & Romero); `quality`: our quality-guided path following "
        "(Cython); scikit-image: `skimage.restoration.unwrap_phase`, quality-guided, masked to the brain.",
        f"Machine: {note}. Script: `benchmarks/bench_unwrap.py`.",
        "",
        "| unwrapper | "
        + " | ".join(f"{a}, TE {te * 1e3:.0f} ms" for a, te in cols)
        + " | seconds (median) | time / Laplacian's (same head) |",
        "| --- |" + " ---: |" * (len(cols) + 2),
    ]
    for name in names:
        cells = [f"{np.mean(errors[(a, te, name)]):.3f}" for a, te in cols]
        if name in seconds:
            t = np.asarray(seconds[name])
            cells += [f"{np.median(t):.2f}", f"{np.median(t / lap):.2f}"]
        else:
            cells += ["", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    write_section("unwrap_te", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
