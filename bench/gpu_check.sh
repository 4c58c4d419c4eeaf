#!/usr/bin/env bash
# The GPU check: the stock-diffusers anchor and fooocusd's own benchmark, in one call, on one card.
#
# Run from the repository root on the device machine (see docs/benchmarks.md, "How to run the GPU
# check"). Everything it writes lands in $OUT (at most 8 files, all at the top level):
#   gpu.txt                         nvidia-smi's name, memory and driver
#   anchor.json, anchor.log         shared/bench/anchor_sdxl.py: stock StableDiffusionXLPipeline, fp16
#   fooocusd_bench.json/.md, bench.log   bench/fooocusd_bench.py --size full
# Time: under 9 minutes (anchor ≤ 110 s, our bench ≤ 420 s, wheels aside).
#
# Environment: CASES (the bench's --cases; empty: this script's order), RUNS (measured runs per latency, default 3), BUDGET_S (start no case
# after it, default 330), BENCH_TIMEOUT_S (default 420; both count over the bench's restarts after a
# crash), SKIP_ANCHOR=1 (a follow-up call on the
# same warm machine: its workdir /tmp/fooocusd-bench already holds the checkpoint), ANCHOR_ARGS (extra
# anchor flags: "--compile --compile-mode default --only-compiled" times stock torch.compile, about
# 2 minutes), ANCHOR_TIMEOUT_S (default 110), SKIP_BENCH=1 (the anchor alone), WHEELS (the wheel
# folder, default .whl; installed into SITE, default /tmp/site, which a later call on the same warm
# machine reuses), FLASH4_PARTS / FLASH4_PARKED / FLASH4_SITE (where FlashAttention 4's parts
# come from, wait and are unpacked: bench/flash4_wheels.sh), BENCH_DEVICE, BENCH_SIZE, BENCH_WORKDIR (default cuda, full,
# /tmp/fooocusd-bench; tests/test_gpu_check_script.py runs this script on the CPU with cpu and tiny,
# so that a broken script or an unknown case name never costs a GPU lease).
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# Packages the device image lacks (diffusers, pydantic-settings, loguru ...) travel as wheels in .whl/.
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$WHEELS"/*.whl || exit 1
    # Installed without bytecode: where PYTHONDONTWRITEBYTECODE=1 is set (on the machine that prepares
    # this check; gpu.txt says whether on the device too), every process, each daemon start included,
    # would compile diffusers, pydantic and fooocusd from source again. A normal install compiles
    # them once; so does this (compileall ignores the flag).
    compile_started=$(date +%s)
    python3 -m compileall -q -j 0 "$SITE" fooocusd bench >/dev/null 2>&1 || true
    echo "bytecode of $SITE, fooocusd and bench compiled in $(( $(date +%s) - compile_started )) s"
fi
if [ -d "$SITE" ]; then  # (installed by an earlier call on this warm machine, too)
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi

# FlashAttention 4 travels in parts over two calls (bench/flash4_wheels.sh): park what came, and
# once the manifest's parts are all here and their checksum matches, unpack them.
FLASH4_PARKED=${FLASH4_PARKED:-/tmp/fooocusd-flash4}
FLASH4_SITE=${FLASH4_SITE:-/tmp/site-flash4}
FLASH4_PARTS=${FLASH4_PARTS:-.}
for part in "$FLASH4_PARTS"/.fa4-part1 "$FLASH4_PARTS"/.fa4-part2; do
    if compgen -G "$part/flash4.*" >/dev/null; then mkdir -p "$FLASH4_PARKED" && cp "$part"/flash4.* "$FLASH4_PARKED"/; fi
done
if [ ! -d "$FLASH4_SITE/flash_attn" ] && [ -f "$FLASH4_PARKED/flash4.manifest" ]; then
    want=$(sed -n 's/^parts=//p' "$FLASH4_PARKED/flash4.manifest")
    have=$(find "$FLASH4_PARKED" -name 'flash4.tar.xz.part*' | wc -l)
    sum=$(cat "$FLASH4_PARKED"/flash4.tar.xz.part* | sha256sum | cut -d' ' -f1)
    if [ "$have" = "$want" ] && grep -q "^sha256=$sum$" "$FLASH4_PARKED/flash4.manifest"; then
        mkdir -p "$FLASH4_SITE"
        cat "$FLASH4_PARKED"/flash4.tar.xz.part* | xz -d | tar -x -C "$FLASH4_SITE" \
            || { echo "flash4: unpacking failed"; rm -rf "$FLASH4_SITE"; }
        [ -d "$FLASH4_SITE" ] && { python3 -m compileall -q -j 0 "$FLASH4_SITE" >/dev/null 2>&1 || true; }
    else
        echo "flash4: $have of $want parts here (or a checksum mismatch): not installed"
    fi
fi
if [ -d "$FLASH4_SITE/flash_attn" ]; then  # (the cutlass package's .pth is not read from PYTHONPATH)
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$FLASH4_SITE:$FLASH4_SITE/nvidia_cutlass_dsl/dsl_packages
    echo "flash4: $(sed -n 's/^flash-attn-4=//p' "$FLASH4_PARKED/flash4.manifest" 2>/dev/null) on PYTHONPATH"
    # without this hook its tensor hand-off library compiles an add-on at first import (minutes)
    python3 -c "import torch; print('flash4: torch DLPack C exchange hook:', hasattr(torch.Tensor, '__dlpack_c_exchange_api__'))" 2>&1 || true
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1 || true
# What a start's imports depend on besides the packages: the kernel (gVisor reports 4.4.0: every file
# access is intercepted) and whether Python may keep the bytecode of the wheels installed uncompiled.
{
    echo "kernel: $(uname -r)"
    python3 -c 'import sys; print("python", sys.version.split()[0], "dont_write_bytecode", sys.dont_write_bytecode, "pycache_prefix", sys.pycache_prefix)'
    python3 - <<'PY'
import importlib.util, pathlib
for name in ("torch", "transformers", "diffusers"):  # found, not imported
    spec = importlib.util.find_spec(name)
    cache = pathlib.Path(spec.origin).parent / "__pycache__" if spec and spec.origin else None
    print(name, "bytecode:", bool(cache and cache.is_dir() and any(cache.glob("*.pyc"))))
PY
} >>"$OUT/gpu.txt" 2>&1 || true

if [ "${SKIP_ANCHOR:-0}" != 1 ]; then
    anchor=""
    for candidate in "${ANCHOR:-}" shared/bench/anchor_sdxl.py .bench-anchor/anchor_sdxl.py ../shared/bench/anchor_sdxl.py; do
        if [ -n "$candidate" ] && [ -f "$candidate" ]; then anchor=$candidate; break; fi
    done
    if [ -n "$anchor" ]; then
        # shellcheck disable=SC2086  # ANCHOR_ARGS is a list of flags
        timeout "${ANCHOR_TIMEOUT_S:-110}" python3 "$anchor" ${ANCHOR_ARGS:-} --out "$OUT/anchor.json" \
            >"$OUT/anchor.log" 2>&1 \
            || echo "anchor exited with status $? (see anchor.log)" | tee -a "$OUT/anchor.log"
    else
        echo "anchor_sdxl.py not found: copy ../shared/bench/anchor_sdxl.py into .bench-anchor/ and carry it" \
            | tee "$OUT/anchor.log"
    fi
fi

# What is unmeasured first (docs/benchmarks.md, "Not measured yet"): the defaults, first so that
# their peak is not shared with earlier cases; FlashAttention 4 forced (batch_4_flash4: where the
# parts of bench/flash4_wheels.sh arrived, else it fails at once saying so) against PyTorch's own
# kernels forced (batch_4_sdpa); (the resnets' convolutions without biases, which our
# Triton passes add, the transformers' GroupNorms on our Triton kernels, the upsamplers as 2x2
# phase convolutions; batch_4 checks the fused resnets against diffusers'); against them each
# change alone undone (batch_4_biases_unfolded, batch_4_group_norms_pytorch,
# batch_4_upsample_plain), the upsamplers as one transposed convolution instead
# (batch_4_upsample_transposed) and the resnets unfused; the daemon's
# queue, also of "Fooocus V2" jobs now that the expansions draw their tokens on the GPU, and the
# expansion alone; where the GPU's time goes (profile); a fresh daemon's start to READY=1 with the
# Triton kernels in their on-disk cache (the sixth check lost its machine around here); low VRAM;
# then what was measured before. The cases took 3-120 s each (`case_wall_s` in the report).
if [ "${SKIP_BENCH:-0}" = 1 ]; then
    [ -f "$OUT/anchor.json" ] && cat "$OUT/anchor.json"
    tail -n 20 "$OUT/anchor.log"
    exit 0
fi
CASES=${CASES:-setup,defaults,batch_4,batch_4_flash4,batch_4_sdpa,batch_4_biases_unfolded,batch_4_group_norms_pytorch,batch_4_upsample_plain,batch_4_upsample_transposed,batch_4_unfused,queue,queue_expansion,expansion,profile,compiled_blocks_cuda_graphs,warm_start,low_vram,batch_4_fused_compiled,queue_unfused,profile_small_graphs,queue_expansion_ahead,profile_unfused,batch_4_cudnn_benchmark,batch_4_nchw,graphs_eager,queue_decode_at_once,encoding_graphs,fp8,graphs_resnets_compiled,compiled_full_graphs,compiled_full_graphs_small,block_autotune,batch_4_autotuned_blocks,pause,batch_4_sdpa_cudnn_unfused_qkv}
# A case that crashes the process or leaves the GPU unusable (the bench then exits with 75) must not
# cost the cases after it: the bench resumes in a fresh process from its report, at most twice,
# within the same budget and timeout. A timeout (124) or an ordinary failure (1, 2) is not resumed.
bench_end=$((SECONDS + ${BENCH_TIMEOUT_S:-420}))
budget_end=$((SECONDS + ${BUDGET_S:-330}))
resume=""
restarts=0
: >"$OUT/bench.log"
while :; do
    timeout $((bench_end - SECONDS)) python3 -X faulthandler bench/fooocusd_bench.py \
        --device "${BENCH_DEVICE:-cuda}" --size "${BENCH_SIZE:-full}" \
        --budget-s $((budget_end > SECONDS ? budget_end - SECONDS : 0)) --queue-jobs 16 --warm-start-jobs 4 \
        --runs "${RUNS:-3}" \
        --cases "$CASES" $resume --workdir "${BENCH_WORKDIR:-/tmp/fooocusd-bench}" --out "$OUT" \
        >>"$OUT/bench.log" 2>&1
    status=$?
    if [ "$status" = 75 ] || { [ "$status" -gt 128 ] && [ "$status" != 124 ]; }; then
        if [ "$restarts" -lt 2 ] && [ "$SECONDS" -lt "$budget_end" ] && [ "$SECONDS" -lt "$bench_end" ] && [ -f "$OUT/fooocusd_bench.json" ]; then
            restarts=$((restarts + 1))
            echo "bench exited with status $status: resuming in a fresh process ($restarts)" | tee -a "$OUT/bench.log"
            resume="--resume"
            continue
        fi
    fi
    break
done
[ -f "$OUT/anchor.json" ] && cat "$OUT/anchor.json"
tail -n 70 "$OUT/bench.log"
exit $status
