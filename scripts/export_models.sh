#!/usr/bin/env bash
# Export training runs into export/ (the models pedq-run ships with): PedQ-NET's reconstruction +
# segmentation networks (a joint run), the masking network, and the nnU-Net_TV ablation's
# reconstruction network in export/nnunet_tv/ (benchmarks only).
# Usage: bash scripts/export_models.sh [JOINT_RUN MASK_RUN TV_RUN]
#   defaults: the fine-tuned runs of scripts/finetune_cpu.sh and the tv run of scripts/train_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
joint=${1:-runs/joint_ft}; mask=${2:-runs/mask_ft}; tv=${3:-runs/tv_cpu}
.venv/bin/pedq-export "$joint" -o export
.venv/bin/pedq-export "$mask" -o export
.venv/bin/pedq-export "$tv" -o export/nnunet_tv
du -sh export
