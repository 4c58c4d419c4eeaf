#!/usr/bin/env bash
# FlashAttention 4 for the GPU check (engine.attention = "sdpa_flash4"; fooocusd/engine/flash4_attention.py).
#
# The GPU machine reaches no package registry, and a device call carries at most 64 MiB with the
# working tree. The flash-attn-4 package and its CuTe DSL compiler (nvidia-cutlass-dsl, for CUDA 13
# and Python 3.12 as the device image has them) are ~100 MB of wheels, ~230 MB installed. So this
# installs them here into a folder for that Python, packs the folder as one xz stream (~65 MB) and
# cuts it in two: each part travels in its own call to the same warm machine.
#
#   bash bench/flash4_wheels.sh        # here: fills .fa4-part1/ and .fa4-part2/ (git-ignored), ~4 min
#   call 1: carry [".whl", ".fa4-part1"]  gpu_check.sh parks the part in /tmp/fooocusd-flash4/
#   call 2: carry [".fa4-part2"]          gpu_check.sh joins the parts, checks them against the
#           manifest, unpacks to /tmp/site-flash4 and puts it on PYTHONPATH (the wheels of .whl
#           installed by call 1 stay in /tmp/site on the warm machine)
#
# Environment: FLASH4_VERSION (default 4.0.0b36), CUTLASS_VERSION (default 4.8.1), PART_MB (the
# first part's size, default 38: it travels beside .whl's ~13 MB and the tree's ~9 MB).
set -euo pipefail
FLASH4_VERSION=${FLASH4_VERSION:-4.0.0b36}
CUTLASS_VERSION=${CUTLASS_VERSION:-4.8.1}
PART_MB=${PART_MB:-38}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$tag")
done
python3 -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --target "$work/site" \
    "flash-attn-4==$FLASH4_VERSION" "nvidia-cutlass-dsl==$CUTLASS_VERSION" \
    "nvidia-cutlass-dsl-libs-base==$CUTLASS_VERSION" "nvidia-cutlass-dsl-libs-core==$CUTLASS_VERSION" \
    "nvidia-cutlass-dsl-libs-cu13==$CUTLASS_VERSION" "apache-tvm-ffi>=0.1.11,<0.2" quack-kernels torch-c-dlpack-ext

tar -C "$work/site" -cf - . | xz -T0 -6e >"$work/flash4.tar.xz"
rm -rf .fa4-part1 .fa4-part2
mkdir -p .fa4-part1 .fa4-part2
split -b "${PART_MB}M" -d -a 1 "$work/flash4.tar.xz" "$work/flash4.tar.xz.part"
mv "$work/flash4.tar.xz.part0" .fa4-part1/
mv "$work"/flash4.tar.xz.part[1-9] .fa4-part2/
parts=$(find .fa4-part1 .fa4-part2 -name 'flash4.tar.xz.part*' | wc -l)
sum=$(sha256sum "$work/flash4.tar.xz" | cut -d' ' -f1)
printf 'parts=%s\nsha256=%s\nflash-attn-4=%s\nnvidia-cutlass-dsl=%s\n' "$parts" "$sum" "$FLASH4_VERSION" "$CUTLASS_VERSION" \
    >.fa4-part2/flash4.manifest
du -sh .fa4-part1 .fa4-part2
