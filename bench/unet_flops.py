"""Where SDXL's UNet spends its arithmetic: FLOPs per UNet row by operation kind, and the compute floor.

Counts with ``torch.utils.flop_counter.FlopCounterMode`` over one forward of the real SDXL UNet
(the config fooocusd ships) built on the meta device: no weights, no memory, seconds on a CPU.
Attention is counted through PyTorch's math path (its two batched matmuls), which is the same
arithmetic the fused kernels do. The floor of a render is rows × FLOPs per row / peak throughput:
with CFG every step runs two rows (uncond and cond) per image.

    python bench/unet_flops.py --out bench/results/unet-flops
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fooocusd.engine.models import SDXL_CONFIG_DIR

KINDS = {
    "addmm": "linear",
    "mm": "linear",
    "convolution": "convolution",
    "bmm": "attention",
    "baddbmm": "attention",
}


def unet_flops(side: int) -> dict[str, float]:
    """TFLOP of one UNet row at ``side``² pixels, by kind, and the total."""
    from diffusers import UNet2DConditionModel

    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    latent = side // 8
    with torch.device("meta"), sdpa_kernel(SDPBackend.MATH):
        unet = UNet2DConditionModel.from_config(config)
        added = {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)}
        with FlopCounterMode(display=False) as counter:
            unet(
                torch.empty(1, 4, latent, latent),
                torch.tensor([500.0]),
                torch.empty(1, 77, 2048),
                added_cond_kwargs=added,
            )
    by_kind: dict[str, float] = {}
    for op, flops in counter.get_flop_counts()["Global"].items():
        kind = KINDS.get(str(op).removeprefix("aten.").split(".")[0], "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + flops / 1e12
    by_kind["total"] = sum(by_kind.values())
    return {kind: round(tflop, 3) for kind, tflop in by_kind.items()}


def report(sides: list[int], steps: dict[int, int], peak_tflops: float) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for side in sides:
        flops = unet_flops(side)
        unet_rows = 2 * steps[side]  # CFG: uncond and cond per step
        rows[f"{side}x{side}"] = {
            "tflop_per_unet_row": flops,
            "share": {kind: round(v / flops["total"], 3) for kind, v in flops.items() if kind != "total"},
            "steps": steps[side],
            "tflop_per_image": round(flops["total"] * unet_rows, 1),
            "floor_s_at_peak": round(flops["total"] * unet_rows / peak_tflops, 3),
        }
    return {"peak_tflops": peak_tflops, "sizes": rows}


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"UNet arithmetic per image with CFG; floor at {data['peak_tflops']} TFLOP/s.",
        "",
        "| size | steps | TFLOP per row | linear | convolution | attention | TFLOP per image | floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, row in data["sizes"].items():
        kinds = ("linear", "convolution", "attention")
        shares = " | ".join(f"{row['share'].get(kind, 0):.0%}" for kind in kinds)
        lines.append(
            f"| {size} | {row['steps']} | {row['tflop_per_unet_row']['total']} | {shares} "
            f"| {row['tflop_per_image']} | {row['floor_s_at_peak']} s |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    data = report([1024, 512], {1024: 30, 512: 20}, args.peak_tflops)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unet_flops.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "unet_flops.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
