#!/usr/bin/env bash
# Create .venv (if needed) and install pedq-deploy with the given extras, e.g. `scripts/setup.sh dev`.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
spec="."
[ -n "$extras" ] && spec=".[${extras}]"
# -e: the Cython kernel in csrc/ is compiled in place by the build
.venv/bin/python -m pip install -q -e "$spec" 2>&1 | grep -vE "^(WARNING: Location|  )|DEPRECATION" || true
.venv/bin/python -c "import pedq_deploy.preprocess._quality_unwrap" || { echo "setup: the Cython kernel did not build" >&2; exit 1; }
