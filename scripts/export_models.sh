#!/usr/bin/env bash
# Export the training runs of scripts/train_cpu.sh into export/ (the models pedq-run ships with):
# PedQ-NET's reconstruction + segmentation networks (joint run), the masking network, and the
# nnU-Net_TV ablation's reconstruction network in export/nnunet_tv/ (benchmarks only).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pedq-export runs/joint_cpu -o export
.venv/bin/pedq-export runs/mask_cpu -o export
.venv/bin/pedq-export runs/tv_cpu -o export/nnunet_tv
du -sh export
