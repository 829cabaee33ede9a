#!/usr/bin/env bash
# Fine-tune the shipped models (export/, export/nnunet_tv/) on the current phantom: each run starts
# from the exported weights (pedq-train --init-from), so its steps add to theirs (both are recorded
# in the manifests). Each stops with a checkpoint after its time budget; rerunning resumes it.
# Usage: bash scripts/finetune_cpu.sh [MASK_MIN JOINT_MIN TV_MIN]   (then scripts/export_models.sh runs/*_ft)
set -euo pipefail
cd "$(dirname "$0")/.."
mask=${1:-40}; joint=${2:-80}; tv=${3:-50}   # 0 skips a run
if [ "$mask" != 0 ]; then
    .venv/bin/pedq-train mask --config configs/mask_cpu.json --out runs/mask_ft --init-from export --time-limit "$mask" -q
fi
if [ "$joint" != 0 ]; then
    .venv/bin/pedq-train joint --config configs/joint_cpu.json --out runs/joint_ft --init-from export --time-limit "$joint" -q
fi
if [ "$tv" != 0 ]; then
    .venv/bin/pedq-train tv --config configs/tv_cpu.json --out runs/tv_ft --init-from export/nnunet_tv --time-limit "$tv" -q
fi
