#!/usr/bin/env bash
# On a lent GPU machine (the device tool's `run`, from the repo root): train, then write the
# weights to $OUT in parts small enough to come back. Prepare the tree here first with
# `bash dev/device_tree.sh slim` (it travels with `carry [".gpu", ".whl"]`).
#
#   bash dev/device_train.sh KIND CONFIG RUN_NAME INIT_DIR MINUTES [STOP_SECONDS]
#
# MINUTES is pedq-train's --time-limit; STOP_SECONDS (default MINUTES*60 + 90) sends SIGTERM,
# which also ends the run with a checkpoint: the data workers' start (about a minute on 16
# cores) counts in neither. Give the call's timeout_s about 40 s more than STOP_SECONDS.
# Models that travelled as float16 (device_tree.sh slim ROLE:half) are turned back into float32
# in INIT_DIR first. The weights come back without the run's frozen networks.
# Back here: python dev/checkpoint_parts.py unpack FILES_AT runs/RUN_NAME, then pedq-export.
set -uo pipefail
if [[ $# -lt 5 ]]; then
    sed -n '2,13p' "$0" >&2
    exit 2
fi
kind=$1 config=$2 name=$3 init=$4 minutes=$5
stop=${6:-$(python3 -c "print(int($minutes * 60 + 90))")}
out=${OUT:?OUT is not set: this runs on the device machine}
wheels=(.whl/*.whl)
if [[ -e ${wheels[0]} ]]; then  # MONAI is not in the device image
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
python3 dev/onnx_half.py unpack "$init" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout -s TERM "$stop" python3 -c 'import sys; from pedq_deploy.cli.train import main; sys.argv[0] = "pedq-train"; main()' \
    "$kind" --config "$config" --out "runs/$name" --init-from "$init" --data-workers "$(( $(nproc) - 2 ))" \
    --time-limit "$minutes" --quiet 2>&1 | tee "$out/train.txt"
python3 dev/checkpoint_parts.py pack "runs/$name" "$out" --drop-frozen || exit 1
cp "runs/$name/train_log.csv" "runs/$name/val_log.csv" "$out/" 2>/dev/null || true
