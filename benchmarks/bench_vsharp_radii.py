"""Why V-SHARP's smallest radius defaults to twice the thickest voxel side: coverage against error.

Training-range seeds (not the held-out 1000-1009), source protocol, tilt 15 degrees, true brain mask,
pedq-run's default unwrapping (lsq). Next to the coverage: the share of the truth's squared norm
(referenced to its brain mean, as the scores are) that lies in the covered voxels, which bounds what
any inversion of this local field can score on the whole-mask NRMSE.
``.venv/bin/python benchmarks/bench_vsharp_radii.py``; writes benchmarks/results/vsharp_radii.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _report import machine, write_section  # noqa: E402

from pedq_deploy import metrics as M  # noqa: E402
from pedq_deploy.inversion import tkd, tv_admm  # noqa: E402
from pedq_deploy.phantom import make_subject  # noqa: E402
from pedq_deploy.physics import phase_to_ppm  # noqa: E402
from pedq_deploy.preprocess import default_radii, lsq_unwrap, vsharp  # noqa: E402

SUBJECTS = [(11, "neonate"), (12, "infant"), (13, "neonate"), (14, "infant")]
R_MIN = (4.0, 3.0, 2.0, 1.56)


def main() -> None:
    note = machine()
    res = {r: [] for r in R_MIN}
    for seed, age in SUBJECTS:
        s = make_subject(seed=seed, age=age, tilt_deg=15.0)
        total = phase_to_ppm(lsq_unwrap(s.phase, s.voxel_size), s.echo_time, s.field_strength)
        truth = np.where(s.brain_mask, s.chi - s.chi[s.brain_mask].mean(), 0.0)
        for r in R_MIN:
            lf, er = vsharp(total, s.brain_mask, s.voxel_size, default_radii(s.voxel_size, r_min=r))
            chi_tkd = tkd(lf, er, s.voxel_size, s.b0_direction)
            chi_tv = tv_admm(lf, er, s.voxel_size, s.b0_direction)
            res[r].append(
                (
                    er.sum() / s.brain_mask.sum(),
                    float((truth[er] ** 2).sum() / (truth**2).sum()),
                    M.nrmse(lf, s.local_field, s.brain_mask),
                    M.nrmse(chi_tkd, s.chi, s.brain_mask),
                    M.nrmse(chi_tv, s.chi, s.brain_mask),
                    M.xsim(chi_tv, s.chi, s.brain_mask),
                )
            )
            print(seed, age, r, res[r][-1], flush=True)
    lines = [
        "## V-SHARP smallest radius: coverage against error",
        "",
        f"{len(SUBJECTS)} phantoms (seeds {SUBJECTS[0][0]}-{SUBJECTS[-1][0]}, training range), 0.78x0.78x2 mm, TE 4.92 ms, SNR 100, "
        "true brain mask, lsq unwrapping; radii from 12 mm down in steps of the thickest voxel side. Whole-mask scores, uncovered voxels as zero. "
        f"Machine: {note}. Script: `benchmarks/bench_vsharp_radii.py`.",
        "",
        "| smallest radius (mm) | coverage | truth's energy covered | local field NRMSE | TKD NRMSE | TV NRMSE | TV XSIM |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in R_MIN:
        a = np.array(res[r])
        lines.append(f"| {r:g} | " + " | ".join(f"{m:.3f}" for m in a.mean(0)) + " |")
    lines += [
        "",
        "Smaller spheres cover more of the brain, but no error improves: the rim they add carries residual background "
        "field. The default stays at twice the thickest voxel side (4 mm here), as QSM.jl's. \"Truth's energy covered\": "
        "the brain's strongest sources (the veins on its surface) lie in the rim that every radius erodes, so an inversion of "
        "this local field, however good, leaves most of the truth's squared norm unexplained: the whole-mask NRMSE of "
        "any method stays near the all-zero map's 1 (an exact map inside the covered voxels, zero outside, would score about "
        "the square root of one minus that share).",
    ]
    write_section("vsharp_radii", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
