"""Latency of prompt expansion ("Fooocus V2"): seconds per expansion, median and p90 over N prompts.

    python bench/expansion_latency.py --model tiny-random --device cpu --out bench/results/expansion
    python bench/expansion_latency.py --model gpt2-random --device cuda --out /tmp/expansion
    python bench/expansion_latency.py --model ~/fooocusd/models/prompt_expansion/gpt2 --device cuda --out r/

``--model`` is a GPT-2-compatible folder, ``tiny-random`` (the built-in tiny expander) or
``gpt2-random`` (GPT-2 small's architecture, 124M parameters, random weights, with the tiny
tokenizer and GPT-2's vocabulary width: GPT-2's cost without downloading it). Each expansion uses
its own seed; the first ``--warmup`` runs are not counted. Writes ``expansion_latency.json`` and
``expansion_latency.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fooocusd
from fooocusd.engine.devices import pick_device, pick_dtype
from fooocusd.engine.expansion import PromptExpander
from fooocusd.engine.expansion.tiny import build_tiny_model, build_tiny_tokenizer
from fooocusd.engine.graph_capture import CudaGraphBackend

GPT2_VOCAB = 50257
PROMPTS = (
    "a red fox in fresh snow, morning light",
    "a lighthouse on a cliff at dusk",
    "portrait of an old fisherman",
    "an old library, dust in the sunbeams",
    "a bowl of ramen on a wooden table",
    "city street at night in the rain, neon signs reflected in puddles",
    "a cat",
    "mountain lake with a small red cabin, autumn trees, mist over the water, a canoe at the jetty",
    "astronaut riding a horse on the moon",
    "a ceramic teapot, studio shot",
    "ancient temple ruins overgrown by the jungle, a waterfall behind, parrots in flight",
    "a girl reading under a cherry tree",
)


def build_expander(model: str, device: torch.device, dtype: torch.dtype) -> PromptExpander:
    if model == "tiny-random":
        return PromptExpander.tiny_random(device=device)
    if model == "gpt2-random":
        backend = CudaGraphBackend(device) if device.type == "cuda" else None
        return PromptExpander(
            build_tiny_tokenizer(),
            gpt2_small_random().to(device=device, dtype=dtype),
            name=model,
            graph_backend=backend,
        )
    return PromptExpander.from_folder(Path(model).expanduser(), device=device, dtype=dtype)


def gpt2_small_random() -> GPT2LMHeadModel:
    """GPT-2 small's architecture and vocabulary width, seeded random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB)).eval()


def write_expander_folder(model: str, folder: Path, dtype: torch.dtype) -> Path:
    """``model`` ("tiny-random" or "gpt2-random") as a folder ``engine.expansion`` loads like a
    user's: config.json, model.safetensors and the tokenizer files. Kept when it is already there."""
    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tiny_tokenizer()
    network = build_tiny_model(len(tokenizer)) if model == "tiny-random" else gpt2_small_random()
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    network.to(dtype=dtype).save_pretrained(folder)
    return folder


def through_the_models_forward(expander: PromptExpander) -> PromptExpander:
    """The same expander without the static GPT-2 step: the model's own forward, growing cache."""
    twin = copy.copy(expander)
    twin.static_step = None
    return twin


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def measure(expander: PromptExpander, count: int, warmup: int) -> dict[str, Any]:
    seconds: list[float] = []
    tokens: list[int] = []
    for index in range(warmup + count):
        prompt = PROMPTS[index % len(PROMPTS)]
        if expander.device.type == "cuda":
            torch.cuda.synchronize(expander.device)
        start = time.perf_counter()
        expansion = expander.expand_parts(prompt, seed=index)
        if expander.device.type == "cuda":
            torch.cuda.synchronize(expander.device)
        if index >= warmup:
            seconds.append(time.perf_counter() - start)
            tokens.append(len(expansion.generated_ids))
    return {
        "expansions": count,
        "median_s": statistics.median(seconds),
        "p90_s": percentile(seconds, 0.9),
        "mean_s": statistics.fmean(seconds),
        "max_s": max(seconds),
        "median_new_tokens": statistics.median(tokens),
        "ms_per_token": 1000 * sum(seconds) / max(1, sum(tokens)),
    }


def measure_together(expander: PromptExpander, batches: int, rows: int = 4) -> dict[str, Any]:
    """Seconds per prompt when ``rows`` prompts are expanded in one call (``expand_many``: one model
    step advances all of them), after one warm-up batch."""
    seconds: list[float] = []
    for index in range(batches + 1):
        items = [(PROMPTS[(index * rows + row) % len(PROMPTS)], index * rows + row) for row in range(rows)]
        if expander.device.type == "cuda":
            torch.cuda.synchronize(expander.device)
        start = time.perf_counter()
        expander.expand_many(items)
        if expander.device.type == "cuda":
            torch.cuda.synchronize(expander.device)
        if index:
            seconds.append((time.perf_counter() - start) / rows)
    return {"rows": rows, "batches": batches, "median_s_per_prompt": statistics.median(seconds)}


def markdown(report: dict[str, Any]) -> str:
    result = report["result"]
    rows = [
        "| model | device | dtype | expansions | median s | p90 s | ms/token | median new tokens |",
        "|---|---|---|---|---|---|---|---|",
        f"| {report['model']} | {report['device']} | {report['dtype']} | {result['expansions']} | "
        f"{result['median_s']:.4f} | {result['p90_s']:.4f} | {result['ms_per_token']:.2f} | "
        f"{result['median_new_tokens']} |",
    ]
    return "# Prompt expansion latency\n\n" + "\n".join(rows) + f"\n\n{report['machine']}\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random", help="folder, tiny-random or gpt2-random")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    parser.add_argument("--prompts", type=int, default=30, help="expansions to time")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON and Markdown")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    started = time.perf_counter()
    expander = build_expander(args.model, device, dtype)
    load_s = time.perf_counter() - started
    report = {
        "model": args.model,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": str(next(expander.model.parameters()).dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "load_s": load_s,
        "result": measure(expander, args.prompts, args.warmup),
        "fooocusd_version": fooocusd.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.node()} {platform.machine()}, Python {platform.python_version()}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "expansion_latency.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "expansion_latency.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))


if __name__ == "__main__":
    main()
