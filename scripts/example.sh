#!/usr/bin/env bash
# Set up, then let the daemon process a copy of inbox_example/ into example-run/outbox and exit
# when drained. Uses the built-in tiny random model: it checks the plumbing and makes noise,
# not pictures (see README, "Models").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

run="example-run"
rm -rf "$run"
mkdir -p "$run"
cp -r inbox_example "$run/inbox"
exec fooocusd once \
    --inbox "$run/inbox" --outbox "$run/outbox" --state-dir "$run/state" \
    --done-dir "$run/done" --failed-dir "$run/failed" \
    --model tiny-random --settle-seconds 0.5 "$@"
