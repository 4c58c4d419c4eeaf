#!/usr/bin/env bash
# Create .venv and install fooocusd with its test tools. Safe to run again: it only
# reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${FOOOCUSD_VENV:-.venv}"
STAMP="$VENV/.fooocusd-installed"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi

python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        # A GPU box: the regular CUDA build (never newer than 2.14.1, see pyproject.toml).
        python -m pip install --quiet "torch<=2.14.1"
    else
        # No CUDA: the CPU-only build, far smaller. Override with FOOOCUSD_TORCH="torch==X".
        python -m pip install --quiet "${FOOOCUSD_TORCH:-torch==2.13.0}"
    fi
fi
python -m pip install --quiet -e ".[test]"
echo "$want" > "$STAMP"
