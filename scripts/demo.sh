#!/usr/bin/env bash
# One command: set up, simulate the built-in demo scan (a neonate at the source protocol:
# 256x256x80, 0.78x0.78x2 mm, 3 T, TE 4.92 ms, head tilted to B0), run the default pipeline on it
# (what pedq-run does with no options: the shipped networks) and score the result against the
# simulation's truth.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/pedq-phantom demo_scan --age neonate --seed 0
.venv/bin/pedq-run demo_scan/magnitude.nii.gz demo_scan/phase.nii.gz -o demo_out --overwrite
.venv/bin/pedq-eval demo_out --truth demo_scan
echo "demo: QSM in demo_out/qsm.nii.gz (ppm), a look at it in demo_out/quicklook.png, scores in demo_out/metrics.json"
