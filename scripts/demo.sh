#!/usr/bin/env bash
# One command: set up, simulate the built-in demo scan (a neonate head at the source protocol:
# 256x256x80, 0.78x0.78x2 mm, 3 T, TE 4.92 ms, head tilted to B0), reconstruct QSM, score it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pedq-phantom demo_scan --age neonate --seed 0
.venv/bin/pedq-run demo_scan/magnitude.nii.gz demo_scan/phase.nii.gz -o demo_out --inversion tv
.venv/bin/pedq-eval demo_out --truth demo_scan
echo "demo: QSM in demo_out/qsm.nii.gz (ppm); scores in demo_out/metrics.json"
