#!/usr/bin/env bash
# Assemble a PedQ-NET models folder from one snapshot of a joint run (config "snapshots": true):
# the snapshot's reconstruction U-Net with the shipped masking and segmentation networks, ready
# for the benchmarks' --models, so the step to ship is chosen on whole validation heads.
# Usage: bash scripts/snapshot_models.sh RUN STEP [OUT]
#   RUN: a pedq-train joint run folder; STEP: a validated step (RUN/snapshots/stepNNNNNN.pt);
#   OUT: default RUN_stepSTEP_models
#   PYTHON: the interpreter with pedq-deploy installed (default .venv/bin/python)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash scripts/snapshot_models.sh RUN STEP [OUT]" >&2; exit 2
fi
run=$(realpath -m "$1"); step=$2; out=$(realpath -m "${3:-${run}_step${step}_models}")
cd "$(dirname "$0")/.."   # export/ and .venv/ are the repository's; RUN and OUT as given, resolved above
snap=$(printf '%s/snapshots/step%06d.pt' "$run" "$step")
if [ ! -f "$snap" ]; then
  echo "error: no snapshot $snap (was the run trained with \"snapshots\": true?)" >&2; exit 2
fi
tmp=$(mktemp -d "${out}.tmp.XXXX")
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-.venv/bin/python}" -c "from pedq_deploy.cli.export import main; main()" "$snap" -o "$tmp/export" >/dev/null
mkdir "$tmp/models"
cp export/mask.* export/seg.* "$tmp/models/"
cp "$tmp"/export/recon.* "$tmp/models/"
rm -rf "$out"; mv "$tmp/models" "$out"
echo "$out"
