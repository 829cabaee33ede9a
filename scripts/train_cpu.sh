#!/usr/bin/env bash
# The CPU training runs behind the shipped models (export/): nnU-Net_TV, PedQ-NET (joint), masking UNETR.
# Each stops with a checkpoint after its time budget; rerunning the same command resumes it.
# Usage: bash scripts/train_cpu.sh [TV_MIN JOINT_MIN MASK_MIN]   (then scripts/export_models.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
tv=${1:-28}; joint=${2:-25}; mask=${3:-17}
.venv/bin/pedq-train tv --config configs/tv_cpu.json --out runs/tv_cpu --time-limit "$tv" -q
.venv/bin/pedq-train joint --config configs/joint_cpu.json --out runs/joint_cpu --time-limit "$joint" -q
.venv/bin/pedq-train mask --config configs/mask_cpu.json --out runs/mask_cpu --time-limit "$mask" -q
