#!/usr/bin/env bash
# Make the working tree small enough to travel to a lent GPU machine, and put it back afterwards.
#
#   bash dev/device_tree.sh slim [ROLE[:half] ...]  # here, before the device call (default roles: recon seg)
#   bash dev/device_tree.sh restore                 # here, after it (always: the index is changed until then)
#
# A device call carries the tracked files and at most 64 MiB in all; the shipped ONNX files in
# export/ are more than that. `slim` untracks them (git rm --cached; the files stay on disk), hides
# them from the copy (.git/info/exclude, between marker lines) and copies the ROLEs' .onnx/.json
# into .gpu/export/, which the call names in `carry` (with .whl, the MONAI wheel) and training
# reads with `--init-from .gpu/export`. `restore` tracks them again and removes the marker lines.
# ROLE:half carries that model's weights as float16 (dev/onnx_half.py; device_train.sh turns
# them back into float32, a close copy): for networks that only help training (a frozen UNETR,
# the masking network that makes training masks), when recon, seg and mask together are too big.
# The device side is dev/device_train.sh; the whole procedure is in dev/README.md.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=.git/info/exclude
begin='# >>> device_tree.sh slim'
end='# <<< device_tree.sh slim'

restore() {
    git reset -q -- export
    if [[ -f $exclude ]]; then
        awk -v b="$begin" -v e="$end" '$0 == b {skip = 1; next} $0 == e {skip = 0; next} !skip' "$exclude" > "$exclude.tmp"
        mv "$exclude.tmp" "$exclude"
    fi
    rm -rf .gpu/export
}

case "${1:-}" in
slim)
    shift
    if [[ $# -gt 0 ]]; then roles=("$@"); else roles=(recon seg); fi
    py=${PYTHON:-python3}; [[ -z ${PYTHON:-} && -x .venv/bin/python ]] && py=.venv/bin/python
    if grep -qxF "$begin" "$exclude" 2>/dev/null; then
        echo "device_tree.sh: already slim; run 'restore' first" >&2
        exit 2
    fi
    for spec in "${roles[@]}"; do
        role=${spec%:half}
        if [[ ! -f export/$role.onnx || ! -f export/$role.json ]]; then
            echo "device_tree.sh: export/$role.onnx or export/$role.json not found" >&2
            exit 2
        fi
    done
    if ! compgen -G ".whl/monai-*.whl" > /dev/null; then  # MONAI is not in the device image: it travels as a wheel
        version=$("$py" -c "import monai; print(monai.__version__)")
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux2014_x86_64 -d .whl "monai==$version"
    fi
    mapfile -t onnx < <(git ls-files 'export/*.onnx')
    if [[ ${#onnx[@]} -gt 0 ]]; then
        git rm -q --cached -- "${onnx[@]}"
    fi
    mkdir -p "$(dirname "$exclude")"
    { echo "$begin"; echo "/export/**/*.onnx"; echo "/.gpu/"; echo "$end"; } >> "$exclude"
    mkdir -p .gpu/export
    for spec in "${roles[@]}"; do
        role=${spec%:half}
        if [[ $spec == *:half ]]; then
            "$py" dev/onnx_half.py pack export "$role" .gpu/export > /dev/null || { restore; exit 2; }
        else
            cp "export/$role.onnx" "export/$role.json" .gpu/export/
        fi
    done
    total=$( (git ls-files -z --cached --others --exclude-standard; printf '%s\0' .gpu .whl) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    if (( total > 64 * 1024 * 1024 )); then
        restore
        echo "device_tree.sh: the tree would be $((total / 1024 / 1024)) MiB, over the 64 MiB a call carries: empty .gpu/ of other things (restored)" >&2
        exit 2
    fi
    echo "slim: ${#onnx[@]} ONNX files untracked; .gpu/export holds ${roles[*]} ($((total / 1024 / 1024)) MiB travel with .gpu and .whl)"
    echo "carry [\".gpu\", \".whl\"]; afterwards: bash dev/device_tree.sh restore"
    ;;
restore)
    restore
    echo "restored: export/ tracked again, .gpu/export removed"
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
