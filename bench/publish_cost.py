"""What publishing one finished image costs the CPU: encode, fsync'd write, sidecar (``outbox/``).

    python bench/publish_cost.py --out bench/results/publish-cost-cpu

The worker hands each finished image to the publisher thread. Before a publication can start it
must have room (``Publisher.depth``): with room for only one, a batch of 4 kept the render thread
waiting for three of these per batch. This measures one publication of a 1024² picture (smooth
shapes with sensor-like noise, so PNG's compression works about as hard as on a generated
image) in each output format, through ``write_image_with_sidecar`` on this machine's disk. Writes
``publish_cost.json`` and ``publish_cost.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fooocusd
from fooocusd.engine.base import GeneratedImage, GenerationRequest
from fooocusd.outbox.metadata import build_record
from fooocusd.outbox.writer import extension_for, write_image_with_sidecar


def generated_like(size: int, seed: int = 0) -> Image.Image:
    """A size×size RGB picture with smooth gradients and shapes plus mild noise."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0.0, 1.0, size)
    x, y = np.meshgrid(axis, axis)
    red = 120 + 90 * np.sin(6 * x + 2 * y)
    green = 110 + 80 * np.cos(5 * y - 3 * x * y)
    blue = 140 + 70 * np.sin(9 * np.hypot(x - 0.5, y - 0.4))
    pixels = np.stack([red, green, blue], axis=-1) + rng.normal(0.0, 6.0, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def sidecar_record(image: Image.Image, fmt: str) -> dict[str, Any]:
    """A default job's full sidecar record, as the worker builds it."""
    request = GenerationRequest(
        prompt="a lighthouse on a cliff at dusk",
        negative="blurry",
        seed=1,
        width=image.width,
        height=image.height,
        steps=30,
        cfg=7.0,
        sampler="dpmpp_2m_sde_gpu",
        scheduler="karras",
        model="sd_xl_base_1.0",
    )
    size = image.size
    generated = GeneratedImage(image, *size, "sd_xl_base_1.0", "", "0" * 64, "cuda", "bfloat16")
    return build_record(
        job_id=1,
        input_name="lighthouse.txt",
        input_sha256="0" * 64,
        request=request,
        generated=generated,
        image_index=0,
        image_count=1,
        output_name="lighthouse" + extension_for(fmt),
        fmt=fmt,
    )


def measure(fmt: str, image: Image.Image, runs: int, folder: Path) -> dict[str, Any]:
    record = sidecar_record(image, fmt)
    seconds, sizes = [], []
    for index in range(runs):
        target = folder / f"{fmt}-{index}{extension_for(fmt)}"
        mark = time.perf_counter()
        write_image_with_sidecar(image, record, target, fmt=fmt, quality=95, embed_metadata=True, umask=0o022)
        seconds.append(time.perf_counter() - mark)
        sizes.append(target.stat().st_size)
    return {
        "median_s": round(statistics.median(seconds), 4),
        "max_s": round(max(seconds), 4),
        "bytes": int(statistics.median(sizes)),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4, help="images per batch, for the waiting figure")
    args = parser.parse_args()

    image = generated_like(args.size)
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as tmp:
        formats = {fmt: measure(fmt, image, args.runs, Path(tmp)) for fmt in ("png", "jpeg", "webp")}
    png = formats["png"]["median_s"]
    report = {
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "fooocusd": fooocusd.__version__,
        "size": args.size,
        "formats": formats,
        "png_wait_per_batch_depth_1_s": round((args.batch - 1) * png, 3),
        "png_wait_per_image_depth_1_s": round((args.batch - 1) * png / args.batch, 3),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "publish_cost.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Publication cost per image",
        "",
        f"{report['machine']}, Python {report['python']}, {args.size}² picture, median of {args.runs}.",
        "",
        "| format | seconds | max | bytes |",
        "|---|---|---|---|",
        *(
            f"| {fmt} | {each['median_s']} | {each['max_s']} | {each['bytes']} |"
            for fmt, each in formats.items()
        ),
        "",
        f"With room for one publication, a batch of {args.batch} PNGs kept the render thread waiting "
        f"about {report['png_wait_per_batch_depth_1_s']} s per batch "
        f"({report['png_wait_per_image_depth_1_s']} s per image); with room for the whole batch, none.",
        "",
    ]
    (args.out / "publish_cost.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
