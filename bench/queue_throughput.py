"""Steady-state throughput of the whole daemon on a queue of prompt files.

Runs the real daemon in-process (``Daemon.run(drain=True)``: watcher, intake, journal, worker,
engine, outbox) on N prompt files dropped at once, and reads the finishing times of the images it
wrote. The first batch carries the model load and warm-up, so the steady-state figure is

    (time the last image was written − time the first batch was written) / (images after the first batch)

which includes everything a user waits for per image: denoising, VAE decode, PNG encoding, fsync'd
writes of image and sidecar, journal updates, and whatever of that the worker overlaps.

    python bench/queue_throughput.py --model tiny-random --device cpu --jobs 6 --out /tmp/queue
    python bench/queue_throughput.py --model /path/sdxl.safetensors --device cuda --jobs 12 \
        --set engine.batch_size=4 --out DIR

``--set section.key=value`` (repeatable) adds TOML settings, e.g. ``outbox.background_writes=false``.
"""

from __future__ import annotations

import time

PROCESS_START = time.time()  # before the heavy imports: a daemon's start counts them too

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fooocusd.service.notify import Notifier  # noqa: E402 - light (loguru only)

PROMPTS = (
    "a lighthouse on a rocky coast at dusk",
    "a red fox in fresh snow, morning light",
    "an old tram in a narrow street, rain",
    "a bowl of ramen on a wooden table, steam",
)


def measure_queue(
    work: Path,
    *,
    model: str,
    device: str,
    dtype: str = "auto",
    jobs: int = 8,
    width: int = 1024,
    height: int = 1024,
    steps: int = 30,
    settings: dict[str, dict[str, Any]] | None = None,
    process_started: float | None = None,
) -> dict[str, Any]:
    """Drop ``jobs`` one-image prompt files, run the daemon until drained, and time the outputs.

    ``first_image_s`` runs from the daemon's construction to the first image written (model load,
    compilation or a warm compile cache, the first batch); ``process_started`` (a ``time.time()``
    taken before the imports) adds ``process_start_to_first_image_s``."""
    from fooocusd.service.daemon import Daemon
    from fooocusd.settings import load_settings

    work.mkdir(parents=True, exist_ok=True)
    folders = {name: work / name for name in ("inbox", "outbox", "done", "failed", "state")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {
        "paths": {**{name: str(path) for name, path in folders.items()}, "models": str(work / "models")},
        "intake": {"settle_seconds": 0.2, "rescan_seconds": 1.0, "polling": "never"},
        "engine": {"model": model, "device": device, "dtype": dtype, "expansion": "off"},
        "generation": {"performance": "speed", "aspect": f"{width}*{height}"},
    }
    for section, values in (settings or {}).items():
        sections.setdefault(section, {}).update(values)
    config = work / "fooocusd.toml"
    config.write_text(_toml(sections), encoding="utf-8")
    for index in range(jobs):
        # Each job's own prompt text: repeated prompts would come from the engine's kept encodings.
        text = f"{PROMPTS[index % len(PROMPTS)]}, job {index + 1}\nseed: {index + 1}\nsteps: {steps}\n"
        (folders["inbox"] / f"job-{index:03d}.txt").write_text(text, encoding="utf-8")

    loaded = load_settings(config, environ={}).settings
    notifier = ReadyClock()
    started = time.time()
    # In a process that ran other cases first, the start is timed from here, not the process's start.
    daemon = Daemon(loaded, notifier=notifier, timed_from_process_start=process_started is not None)
    summary = daemon.run(drain=True)
    wall = time.time() - started
    result = {"wall_s": round(wall, 2), **_outputs(folders["outbox"], jobs, started, process_started)}
    if daemon.start_timeline is not None:  # the daemon's own account of its start (its ready log line)
        result["start_steps_s"] = daemon.start_timeline.record()
        result["model_load_steps_s"] = daemon.start_timeline.details.get("model", {})
    if notifier.ready_at is not None:
        result["ready_s"] = round(notifier.ready_at - started, 2)
        if process_started is not None:
            result["process_start_to_ready_s"] = round(notifier.ready_at - process_started, 2)
    return {**result, "summary": str(summary)}


class ReadyClock(Notifier):
    """No systemd socket; remembers when the daemon said READY=1 (after load and warm-up)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.ready_at: float | None = None

    def ready(self) -> None:
        if self.ready_at is None:
            self.ready_at = time.time()
        super().ready()


def batch_ends(sizes: list[int]) -> list[int]:
    """Index of each batch's last image, from each image's ``batch_size`` in the order the images
    were written (one publisher writes a batch's images before the next batch's)."""
    ends: list[int] = []
    index = 0
    while index < len(sizes):
        index = min(index + max(1, sizes[index]), len(sizes))
        ends.append(index - 1)
    return ends


def steady_window(sizes: list[int]) -> tuple[int, int] | None:
    """(first, last) image indices between which the queue ran in full batches: from the end of the
    first batch (which formed while the intake was still queueing) to the end of the last batch as
    large as the largest (a smaller one at the tail is the queue running out); None when there is
    no such stretch. (Until 2026-11-27 the rate ran from the image at index "largest batch - 1" to
    the last: with a first batch of 3 of 4 it counted images of a batch that had already finished,
    and overstated the rate.)"""
    ends = batch_ends(sizes)
    largest = max(sizes, default=1)
    full = [end for end in ends[1:] if sizes[end] == largest]
    return (ends[0], full[-1]) if full else None


def _outputs(outbox: Path, jobs: int, started: float, process_started: float | None = None) -> dict[str, Any]:
    written = sorted((path.stat().st_mtime, path) for path in outbox.rglob("*.json"))
    records = [json.loads(path.read_text(encoding="utf-8")) for _, path in written]
    finished = [mtime for mtime, _ in written]
    sizes = [int(record.get("batch_size", 1) or 1) for record in records]
    batch = max(sizes, default=1)
    result: dict[str, Any] = {"images": len(records), "expected": jobs, "largest_batch": batch}
    if len(records) < jobs:  # a rate over part of the queue, or none, must not pass for a result
        result["error"] = (
            f"the daemon wrote {len(records)} of {jobs} images, so no rate is given: its log says why "
            "(a job that failed, or an input it could not take)"
        )
    expanded = sum(record.get("expansion") == "fooocus_v2" for record in records)
    if expanded:
        result["expanded_images"] = expanded
    if finished:
        result["first_image_s"] = round(finished[0] - started, 2)
        if process_started is not None:
            result["process_start_to_first_image_s"] = round(finished[0] - process_started, 2)
    window = steady_window(sizes) if len(records) >= jobs else None
    if window is not None:
        first, last = window
        per_image = (finished[last] - finished[first]) / (last - first)
        result["steady_s_per_image"] = round(per_image, 3)
        result["images_per_hour"] = round(3600 / per_image) if per_image > 0 else None
    totals = [record.get("timings", {}).get("total") for record in records]
    totals = [value for value in totals if isinstance(value, int | float)]
    if totals:
        result["engine_total_s_median"] = round(statistics.median(totals), 3)
    return result


def extra_cost_pct(plain: dict[str, Any], other: dict[str, Any]) -> float | None:
    """How much slower per image, in percent, the ``other`` queue ran than the ``plain`` one;
    None unless both have a steady rate."""
    base, slower = plain.get("steady_s_per_image"), other.get("steady_s_per_image")
    if not isinstance(base, int | float) or not isinstance(slower, int | float) or base <= 0:
        return None
    return round(100 * (slower / base - 1), 1)


def compile_cache_counters() -> dict[str, int]:
    """Hits and misses of torch.compile's on-disk caches in this process (FX graphs, AOT autograd)."""
    torch_module = sys.modules.get("torch")
    if torch_module is None:
        return {}
    from torch._dynamo.utils import counters

    return {
        f"{group}.{name}": int(value)
        for group in ("inductor", "aot_autograd")
        for name, value in counters[group].items()
        if "cache" in name
    }


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs; the value is read as JSON when it parses (numbers, booleans)."""
    sections: dict[str, dict[str, Any]] = {}
    for item in items:
        dotted, _, raw = item.partition("=")
        section, _, key = dotted.partition(".")
        if not key or not raw:
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        sections.setdefault(section, {})[key] = value
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024, help="square image size in pixels")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="section.key=value")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fooocusd-queue-"))
    result = measure_queue(
        work,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        jobs=args.jobs,
        width=args.size,
        height=args.size,
        steps=args.steps,
        settings=parse_sets(args.sets),
        process_started=PROCESS_START,
    )
    result["compile_cache"] = compile_cache_counters()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "queue_throughput.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
