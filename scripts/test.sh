#!/usr/bin/env bash
# One command: set up, lint and run the test suite. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# the training/export tests need torch + MONAI: PyTorch's CPU build first (a bare `torch` from PyPI
# is a multi-GB CUDA build), then the train extra. The runtime tests check that the runtime never
# imports it (in fresh processes, and in a fresh venv without torch).
if ! .venv/bin/python -c "import torch, monai, onnx" 2>/dev/null; then
    # PyTorch's CPU index where it can be reached; otherwise whatever the configured index offers
    cpu_index=()
    if .venv/bin/python -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" 2>/dev/null; then
        cpu_index=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    .venv/bin/python -m pip install -q torch==2.13.0 "${cpu_index[@]}" 2>&1 | grep -vE "^WARNING: Location" || true
    .venv/bin/python -m pip install -q -e ".[dev,train]" 2>&1 | grep -vE "^WARNING: Location|^  " || true
fi
# lint and format (configured in pyproject.toml)
.venv/bin/ruff check .
.venv/bin/ruff format --check .
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "test: pytest collected no test; treating that as a failure" >&2
    exit 1
fi
exit "$code"
