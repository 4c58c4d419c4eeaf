"""What encoding one prompt line costs the host: PyTorch operations dispatched by SDXL's two text
encoders (the real architectures from the configs fooocusd ships, random weights), and the seconds
per line on this device.

Each operation is a kernel launch on a GPU, or host-side work, that Python pays for one by one; on
the benchmark's H100 host that launching, not the GPU, set the pace (docs/benchmarks.md). This is
the cost ``encoding_cache.py`` (a line encoded once) and ``encoder_graphs.py`` (one replay per
encoder) take away.

    python bench/encoder_ops.py --device cpu --out bench/results/encoder-ops-cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fooocusd.engine.models import SDXL_CONFIG_DIR

TOKENS = 77


class CountingOps(TorchDispatchMode):
    """Counts the ATen operations dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        return func(*args, **(kwargs or {}))


def build(kind: type, folder: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    config = CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / folder)
    with torch.device(device):
        return kind(config).to(dtype).eval()


def measure(encoder: torch.nn.Module, device: torch.device, runs: int) -> dict[str, Any]:
    ids = torch.randint(0, 49_000, (1, TOKENS), device=device)
    with torch.inference_mode():
        encoder(ids, output_hidden_states=True)  # first call: lazy set-up
        counter = CountingOps()
        with counter:
            encoder(ids, output_hidden_states=True)
        seconds = []
        for _ in range(runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            encoder(ids, output_hidden_states=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
    return {"aten_ops": counter.calls, "median_ms": round(1000 * statistics.median(seconds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32}.get(args.dtype)
    dtype = dtype or getattr(torch, args.dtype)
    torch.manual_seed(0)
    report: dict[str, Any] = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "tokens": TOKENS,
    }
    for name, kind, folder in (
        ("clip_l", CLIPTextModel, "text_encoder"),
        ("clip_g", CLIPTextModelWithProjection, "text_encoder_2"),
    ):
        report[name] = measure(build(kind, folder, device, dtype), device, args.runs)
    report["per_line"] = {
        "aten_ops": report["clip_l"]["aten_ops"] + report["clip_g"]["aten_ops"],
        "median_ms": round(report["clip_l"]["median_ms"] + report["clip_g"]["median_ms"], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder_ops.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
