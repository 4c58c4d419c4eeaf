#!/usr/bin/env bash
# Set up, lint, then run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
exec python -m pytest -q -n "${FOOOCUSD_TEST_WORKERS:-2}" "$@"
