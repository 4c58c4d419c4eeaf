#!/usr/bin/env bash
# Everything the GPU check needs that the device machine lacks, prepared here (run from the
# repository root; what exists already is kept). See docs/benchmarks.md, "How to run the GPU check".
#   .whl/             packages the device image lacks (diffusers, pydantic-settings, loguru, ...): ~13 MB
#   .bench-anchor/    the stock-diffusers anchor script, from ../shared/bench/
#   .fa4-part1/ .fa4-part2/   FlashAttention 4 in two parts for two calls (bench/flash4_wheels.sh)
# All are git-ignored, so they travel only when a call names them in `carry`.
set -euo pipefail
for folder in /.whl/ /.bench-anchor/; do
    grep -qxF "$folder" .git/info/exclude 2>/dev/null || echo "$folder" >>.git/info/exclude
done

if [ ! -f .bench-anchor/anchor_sdxl.py ] && [ -f ../shared/bench/anchor_sdxl.py ]; then
    mkdir -p .bench-anchor && cp ../shared/bench/anchor_sdxl.py .bench-anchor/
fi

# Every runtime dependency in pyproject.toml is either on the device image (DEVICE_IMAGE_HAS, from
# /work/.library/device/KINDS.md) or fetched below with what it needs itself (tests/test_gpu_check_script.py
# checks this: tomli-w, added to pyproject without being added here, failed every queue case of the
# 2026-11-29 check). pydantic-core must be the version pydantic's METADATA pins.
DEVICE_IMAGE_HAS="torch transformers safetensors huggingface-hub pillow rich numpy peft prometheus-client opencv-python-headless"
for pkg in diffusers==0.42.1 pydantic pydantic-core==2.50.5 pydantic-settings python-dotenv \
    typing-inspection annotated-types typing-extensions loguru watchdog torchao==0.18.0 pi-heif \
    tomli-w torchsde trampoline spandrel; do
    wheel_name="${pkg%%==*}"
    if compgen -G ".whl/${wheel_name//-/_}-*.whl" >/dev/null; then
        continue
    fi
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$pkg"
done

if [ ! -f .fa4-part2/flash4.manifest ]; then
    bash bench/flash4_wheels.sh
fi
du -sh .whl .bench-anchor .fa4-part1 .fa4-part2 2>/dev/null
