#!/usr/bin/env bash
# The GPU check: the stock-diffusers anchor and fooocusd's own benchmark, in one call, on one card.
#
# Run from the repository root on the device machine (see docs/benchmarks.md, "How to run the GPU
# check"). Everything it writes lands in $OUT (at most 8 files, all at the top level):
#   gpu.txt                         nvidia-smi's name, memory and driver
#   anchor.json, anchor.log         shared/bench/anchor_sdxl.py: stock StableDiffusionXLPipeline, fp16
#   fooocusd_bench.json/.md, bench.log   bench/fooocusd_bench.py --size full
# Time: about 9 minutes at most (anchor ≤ 150 s, our bench ≤ 390 s, start-up and wheels aside).
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# Packages the device image lacks (diffusers, pydantic-settings, loguru ...) travel as wheels in .whl/.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1 || true

anchor=""
for candidate in "${ANCHOR:-}" shared/bench/anchor_sdxl.py .bench-anchor/anchor_sdxl.py ../shared/bench/anchor_sdxl.py; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then anchor=$candidate; break; fi
done
if [ -n "$anchor" ]; then
    timeout 150 python3 "$anchor" --out "$OUT/anchor.json" >"$OUT/anchor.log" 2>&1 \
        || echo "anchor exited with status $? (see anchor.log)" | tee -a "$OUT/anchor.log"
else
    echo "anchor_sdxl.py not found: copy ../shared/bench/anchor_sdxl.py into .bench-anchor/ and carry it" \
        | tee "$OUT/anchor.log"
fi

timeout 390 python3 bench/fooocusd_bench.py --device cuda --size full --budget-s 330 \
    --workdir /tmp/fooocusd-bench --out "$OUT" >"$OUT/bench.log" 2>&1
status=$?
tail -n 60 "$OUT/bench.log"
exit $status
