#!/usr/bin/env bash
# One command: set up and run the test suite. Extra arguments go to pytest (e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "test: pytest collected no test; treating that as a failure" >&2
    exit 1
fi
exit "$code"
