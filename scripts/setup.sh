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
if ! python -c "import torch, torchvision" 2>/dev/null; then
    # torchvision comes along for spandrel (upscalers). Never newer than torch 2.14.1 (see
    # pyproject.toml); override with FOOOCUSD_TORCH="torch==X torchvision==Y".
    # shellcheck disable=SC2086
    python -m pip install --quiet ${FOOOCUSD_TORCH:-"torch<=2.14.1" torchvision}
fi
# fp8: torchao, so that the fp8 quantisation tests run on the CPU too (engine.quantize).
python -m pip install --quiet -e ".[test,fp8]"
echo "$want" > "$STAMP"
