"""fooocusd's own speed and memory benchmark, driven through ``SDXLEngine`` on random weights.

Builds SDXL base from the configs fooocusd ships with random weights directly on the device (no
download), writes it as a single-file checkpoint like those users download (plus a second copy
under another name, for the model switch) and two random LoRAs of the real shapes, then drives the
engine through its public interface (``load``, ``generate``, ``describe``) and measures:

* start to ready: engine load (from the page cache, with hashing) + the first image;
* latency of one 1024², 30-step image (median of N after a warm-up), Fooocus's refinements
  (sharpness 2, adaptive CFG 7, ADM 1.5/0.8/0.3) on and off, and one 512², 20-step image;
* throughput of a queue of 4 images through ``generate`` one by one, and of 4 images in one UNet
  batch (``generate_batch``), eager and under regional torch.compile;
* the whole daemon (watcher, journal, worker, engine, outbox) on a queue of prompt files
  (``queue_throughput.py``): steady-state seconds per image with batches of 4 and background
  writes, eager and compiled (the compiled daemon starts on the compile cache the ``fast`` case
  filled), with the VAE decode left to the publisher thread (``overlap_decode``, the default on a
  GPU) and without (``queue_decode_at_once``), and one by one with inline writes, as before
  batching and overlap; and with every job asking for "Fooocus V2" (a random GPT-2 small loaded
  from a folder): with the daemon's default (expansions run in groups as jobs are claimed,
  ``queue_expansion``; its ``expansion_cost_pct`` against ``queue``, no expansion) and ahead on
  their own thread (``queue_expansion_ahead``, ``engine.expand_ahead = "on"``). Until 2026-11-29
  ``queue_expansion`` named the ahead mode and ``queue_expansion_inline`` the default;
* peak memory (``torch.cuda.max_memory_allocated``) resident, and in low-VRAM mode;
* switching LoRA (first load of a file, and back to an already loaded one) and switching model;
* prompt-expansion latency (GPT-2 small's shape, random weights): the static-cache step (CUDA
  graphs on a GPU) against the model's own forward with a growing cache;
* the text encoders' seconds per image (``encoding``): every line encoded afresh, a new prompt with
  the negative kept from earlier jobs, and a prompt kept too (``encoding_cache.py``); the latency
  cases give each run a prompt of its own, so their figures include encoding a new prompt; and
  with the encoders replayed as CUDA graphs (``encoding_graphs``, ``encoder_graphs.py``);
* SDXL's attention shapes alone with each of PyTorch's attention kernels forced (flash, memory
  efficient, cuDNN) against its own choice (``attention_backends``, ``attention_backends.py``);
  every case with the defaults reports what ``engine.attention = "auto"`` measured and chose, and
  ``batch_4_sdpa`` / ``batch_4_sdpa_cudnn`` render the batch of 4 with each SDPA order forced,
  ``batch_4_flash4`` with FlashAttention 4 as PyTorch's flash kernel (where ``flash-attn-4`` is
  installed: ``bench/flash4_wheels.sh`` carries it to the GPU machine);
* one transformer block per level compiled as the engine compiles it and with inductor's GEMM
  autotuning (``block_autotune``, ``block_autotune.py``): compile seconds and ms per call;
* the transformer blocks compiled with inductor's GEMM autotuning (``batch_4_autotuned_blocks``,
  ``compile_mode = "max-autotune-no-cudagraphs"``): whether Triton GEMM templates with the GEGLU
  gate, bias and residual adds fused into their epilogues beat cuBLAS plus inductor's separate
  passes (GEGLU alone was 4.1 % of the GPU's time), and what the autotuning costs at start
  (``ready_s``);
* decoded pixels to a PIL image (``postprocess``): diffusers' host-side NumPy conversion against
  fooocusd's 8-bit quantisation on the device (``decode.pixels_to_image``, the same bytes);
* each optimisation on its own against a plain engine (all off): channels_last, fused QKV, fp16
  instead of bf16, xformers (when importable), regional torch.compile (cold, then warm disk cache);
  and the defaults without channels_last (``batch_4_nchw`` against ``batch_4``): under regional
  compile the resnet blocks run eagerly, and where torch's CUDA GroupNorm has no channels_last
  kernel it returns a contiguous tensor that the next convolution converts back; and with cuDNN
  timing its convolution algorithms per shape (``batch_4_cudnn_benchmark``); and batches of 8
  (``batch_8``: whether a large card gains per image from more than ``batch_size = "auto"``'s 4);
* where a batch of 4 spends the device's time (``profile``): the top kernels of one render
  (8 denoising steps) by self device time, and the share per kind (attention, convolution, matmul,
  normalisation, layout copies, compiled Triton kernels, the rest) (``kernel_profile.py``);
* the UNet replayed as captured CUDA graphs (``engine.cuda_graphs = "on"``; ``graphs``: over regional
  compile, ``graphs_eager``: without compile; ``queue_graphs``: the daemon's queue with them), with
  the allocator's peak reserved memory (the graphs' pool) beside the peak allocated;
* the whole UNet compiled with CUDA graphs: cold, at 512² too, and a fresh daemon process starting
  on its saved compile cache (process start to the first image); regional compile alone;
* fp8 matmuls alone at the UNet's transformer shapes, bf16 against ``torch._scaled_mm`` with and
  without on-the-fly input scaling, and torchao's weights (``fp8_matmul``, ``fp8_matmul.py``);
* fp8 UNet weights (``engine.quantize = "fp8"``) against the default engine: the same 3 seeds rendered
  with and without fp8, latency of both, and how far the decoded images and the final latents move
  (PSNR, max abs difference). Reports "unsupported" (with the reason) where fp8 cannot run.

    python bench/fooocusd_bench.py --device cuda --size full --out DIR      # GPU machine
    python bench/fooocusd_bench.py --device cpu --size tiny --out DIR       # plumbing check on a CPU

``--cases a,b,c`` runs those cases in that order (``setup`` first; it reuses a ``--workdir`` it
already filled). ``--size tiny`` uses a tiny random SDXL at 1/8 of the resolutions and 6 (4) steps:
it proves the script end to end and its numbers are not performance figures. Writes
``fooocusd_bench.json`` and ``fooocusd_bench.md`` into ``--out`` after every case, so a run cut
short still leaves what it measured. Cases that would start after ``--budget-s`` seconds are skipped
and say so. A case that kills the process (a segfault, an abort) stays in the report as
``DIED_DURING_CASE``; one that leaves the GPU unusable (a sticky CUDA error, which would fail every
later case) ends the process with status ``RESTART_EXIT``. Either way ``--resume`` carries on in a
fresh process from the report in ``--out``, without the cases it already holds; ``gpu_check.sh`` does
that by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

PROCESS_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from targets import Sizes, TargetRow, target_rows, targets_markdown  # noqa: E402

import fooocusd  # noqa: E402
from fooocusd.engine import flash4_attention  # noqa: E402
from fooocusd.engine.acceleration import TRITON_CACHE_FOLDER, AccelerationOptions  # noqa: E402
from fooocusd.engine.base import GenerationRequest  # noqa: E402
from fooocusd.engine.devices import context_lost as gpu_context_lost  # noqa: E402
from fooocusd.engine.devices import gpu_memory  # noqa: E402
from fooocusd.engine.models import HASH_CACHE_NAME, SDXL_CONFIG_DIR, ModelLocation  # noqa: E402
from fooocusd.engine.sdxl import SDXLEngine, _default_scheduler  # noqa: E402

IMPORTS_S = time.perf_counter() - PROCESS_START
OFF = AccelerationOptions(vram="high", compile="off", channels_last=False, fuse_qkv=False, layout_on_cpu=True)
"""The plain engine every optimisation is measured against: eager, no layout changes, no fusion."""
PHASES = ("encode", "denoise", "decode")
PROFILED_STEPS = 8
"""``GeneratedImage.timings`` parts: text encoders, the denoising loop, VAE decode + image."""
KEEP_COMPILED_ENGINE = frozenset({"warm_start", "compiled_full_graphs_small"})
"""Cases before which the engine ``compiled_latency`` kept stays resident (the small-size case uses it)."""
LORA_RANK = 8
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
IMPORT_PROFILE_FROM_S = 10.0
"""``warm_start`` profiles the imports of a fresh process when its daemon's took this long (a second
import: the page cache is warm by then, so a slow disk shows less there than in the start itself)."""
IMPORT_PROFILE_TIMEOUT_S = 90
KERNEL_CACHES = {
    "TRITON_CACHE_DIR": TRITON_CACHE_FOLDER,
    "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR": flash4_attention.CACHE_FOLDER,
    "TVM_FFI_CACHE_DIR": flash4_attention.TVM_FFI_FOLDER,
}
"""Kernel caches the engine pins process-wide under its cache folder (``configure_triton_cache``,
``flash4_attention.configure_cache``), by variable and folder name."""
RESTART_EXIT = 75
"""Exit status after a case left the GPU unusable: ``gpu_check.sh`` resumes in a fresh process."""
DIED_DURING_CASE = "the benchmark process died during this case (crash, kill or timeout): see bench.log"
SELFTEST_CRASH = "selftest_crash"
"""A case that kills its own process, so the tests can check that the GPU check resumes after it."""


class Bench:
    """Runs the cases and keeps the report on disk up to date."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.phases: dict[str, float] = {}
        self.prompts_made = 0
        self.device = torch.device("cuda" if args.device == "cuda" else "cpu")
        self.dtype = getattr(torch, args.dtype) if args.dtype != "auto" else _auto_dtype(self.device)
        self.tiny = args.size == "tiny"
        self.big, self.small = (128, 64) if self.tiny else (1024, 512)
        self.steps, self.small_steps = (6, 4) if self.tiny else (30, 20)
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="fooocusd-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()
        self.kept: SDXLEngine | None = None
        self.allocated_before = 0
        """Bytes still allocated when the running case started (``reset_peak``)."""
        self.report: dict[str, Any] = {
            "label": "CPU, tiny random model: a plumbing check, NOT a performance figure"
            if self.tiny
            else "full-size SDXL architecture, random weights",
            "device": str(self.device),
            "device_name": _device_name(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "size": args.size,
            "runs": args.runs,
            "versions": _versions(),
            "imports_s": round(IMPORTS_S, 2),
            "sizes": {
                "big": self.big,
                "steps": self.steps,
                "small": self.small,
                "small_steps": self.small_steps,
            },
            "cases": {},
        }
        if args.resume:
            self.resume_report()

    def resume_report(self) -> None:
        """Carry on from an earlier process's report in ``--out``: its cases stand and are not rerun."""
        earlier = self.args.out / "fooocusd_bench.json"
        if not earlier.is_file():
            return
        report = json.loads(earlier.read_text(encoding="utf-8"))
        died_in = [
            name for name, values in report["cases"].items() if values.get("error") == DIED_DURING_CASE
        ]
        restart = {"after_case": died_in[-1] if died_in else "", "imports_s": round(IMPORTS_S, 2)}
        self.report["cases"] = report["cases"]
        self.report["case_wall_s"] = report.get("case_wall_s", {})
        self.report["restarts"] = [*report.get("restarts", []), restart]
        self.report["earlier_wall_s"] = report.get("wall_s", 0) + report.get("earlier_wall_s", 0)

    # -- bookkeeping ------------------------------------------------------------------------

    def case(self, name: str, run: Callable[[], dict[str, Any]]) -> None:
        if name not in KEEP_COMPILED_ENGINE:
            self.kept = None  # a resident second engine would skew every later memory figure
            _free()
        elapsed = time.perf_counter() - self.started
        if elapsed > self.args.budget_s:
            self.report["cases"][name] = {"skipped": f"time budget: {elapsed:.0f} s > {self.args.budget_s} s"}
            self.save()
            return
        print(f"[{elapsed:6.1f} s] {name}", flush=True)
        self.report["cases"][name] = {"error": DIED_DURING_CASE}  # stands if this process dies in the case
        self.save()
        try:
            self.report["cases"][name] = run()
        except Exception as exc:  # a failing case must not lose the others
            self.report["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            self.record_wall(name, elapsed)
            lost = gpu_context_lost(self.device)
            if lost:
                self.report["cases"][name]["gpu_context_lost"] = lost
                self.save()
                raise SystemExit(RESTART_EXIT) from exc
        else:
            self.record_wall(name, elapsed)
        _free()
        self.save()

    def record_wall(self, name: str, started_at: float) -> None:
        """Seconds each case took, beside the cases: for planning a lease's calls."""
        spent = round(time.perf_counter() - self.started - started_at, 1)
        self.report.setdefault("case_wall_s", {})[name] = spent

    def record_restart_setup(self, values: dict[str, Any]) -> None:
        """A resumed process's ``setup`` goes with its restart, the first process's stays in ``cases``."""
        self.report["restarts"][-1]["setup"] = values
        self.save()

    def save(self) -> None:
        self.report["wall_s"] = round(time.perf_counter() - self.started, 1)
        self.report["targets"] = [row.record() for row in _target_rows(self.report)]
        out = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "fooocusd_bench.json").write_text(json.dumps(self.report, indent=2, default=str) + "\n")
        (out / "fooocusd_bench.md").write_text(markdown(self.report))

    # -- building blocks --------------------------------------------------------------------

    def engine(self, options: AccelerationOptions = OFF, **overrides: Any) -> SDXLEngine:
        location = overrides.pop("location", self.location)
        return SDXLEngine(
            location,
            models_dir=self.work / "models",
            hash_cache=self.work / "hashes.json",
            device=str(self.device),
            dtype=str(overrides.pop("dtype", self.dtype)).removeprefix("torch."),
            attention=overrides.pop("attention", "sdpa" if options == OFF else "auto"),
            acceleration=options,
            config_dir=self.config_dir,
            batch_size=overrides.pop("batch_size", "auto"),
        )

    def request(self, **overrides: Any) -> GenerationRequest:
        request = GenerationRequest(
            prompt="a lighthouse on a rocky coast at dusk",
            negative="blurry, text",
            seed=1,
            width=self.big,
            height=self.big,
            steps=self.steps,
            cfg=7.0,
            sampler="dpmpp_2m_sde_gpu",
            scheduler="karras",
            model="",
            sharpness=2.0,
        )
        return replace(request, **overrides)

    def timed(self, engine: SDXLEngine, request: GenerationRequest, runs: int) -> list[float]:
        """Seconds per image; ``self.phases`` then holds the median encode/denoise/decode split.

        Each run has a prompt of its own (the negative stays), as a queue of new jobs would: a
        repeated prompt would come from the engine's kept encodings and hide the encoders' cost."""
        seconds, phases = [], []
        for index in range(runs):
            self.sync()
            mark = time.perf_counter()
            image = engine.generate(
                replace(request, seed=request.seed + index + 1, prompt=self.new_prompt(request.prompt))
            )
            self.sync()
            seconds.append(round(time.perf_counter() - mark, 4))
            phases.append(image.timings)
        self.phases = {
            name: round(statistics.median(each.get(name, 0.0) for each in phases), 4) for name in PHASES
        }
        return seconds

    def new_prompt(self, prompt: str) -> str:
        """``prompt`` with a number never used before: text the engine has not encoded yet."""
        self.prompts_made += 1
        return f"{prompt}, take {self.prompts_made}"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        """Start a case's peak here. What earlier cases still hold counts in it, so unreachable
        objects go first, and ``allocated_before_gib`` says how much was left (a case's peak is
        its own only where that is ~0)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.allocated_before = torch.cuda.memory_allocated()

    def allocated_before_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(self.allocated_before / 2**30, 2)

    def peak_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)

    def peak_reserved_gib(self) -> float | None:
        """The caching allocator's most held: allocations, free blocks and CUDA graph pools."""
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.max_memory_reserved() / 2**30, 2)

    def reserved_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.memory_reserved() / 2**30, 2)

    def device_used_gib(self) -> float | None:
        memory = gpu_memory(self.device)
        return round((memory[1] - memory[0]) / 2**30, 2) if memory is not None else None

    def resident_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(torch.cuda.memory_allocated() / 2**30, 2)

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        from tests.engine_helpers import save_sgm_checkpoint, write_tiny_checkpoint

        checkpoints = self.work / "models" / "checkpoints"
        checkpoints.mkdir(parents=True, exist_ok=True)
        first = checkpoints / "sdxl-random-a.safetensors"
        second = checkpoints / "sdxl-random-b.safetensors"
        loras = self.work / "models" / "loras"
        self.config_dir = self.work / "tiny-config" if self.tiny else SDXL_CONFIG_DIR
        self.location = ModelLocation(kind="single_file", name=first.stem, path=first)
        self.other = second.stem
        done = (first, second, loras / "bench_a.safetensors", loras / "bench_b.safetensors")
        if all(path.exists() for path in done) and (not self.tiny or self.config_dir.is_dir()):
            return {"reused": str(self.work), "checkpoint_bytes": first.stat().st_size}
        mark = time.perf_counter()
        source = build_source(self.tiny, self.device, self.dtype)
        built_s = time.perf_counter() - mark
        params = sum(p.numel() for p in source.unet.parameters())
        mark = time.perf_counter()
        if self.tiny:
            write_tiny_checkpoint(source, first, self.config_dir)
        else:
            save_sgm_checkpoint(source, first)
        written_s = time.perf_counter() - mark
        if not second.exists():
            os.link(first, second)  # the same bytes under another name: a switch reloads it
        loras.mkdir(parents=True, exist_ok=True)
        for seed, name in ((1, "bench_a"), (2, "bench_b")):
            write_random_lora(source, loras / f"{name}.safetensors", seed)
        del source
        return {
            "build_s": round(built_s, 2),
            "unet_params_m": round(params / 1e6, 2),
            "write_checkpoint_s": round(written_s, 2),
            "checkpoint_bytes": first.stat().st_size,
        }

    # -- cases ------------------------------------------------------------------------------

    def defaults(self) -> dict[str, Any]:
        """The engine as the daemon runs it by default, start to ready, then latency and memory.
        Its compile cache (and attention timings) are kept, as a daemon's cache folder keeps them, for
        a ``warm_start`` after it (a later compiled case replaces them with its own)."""
        from fooocusd.engine.acceleration import COMPILE_CACHE_FOLDER, save_compile_artifacts

        cache = self.work / "compile-cache-defaults"
        shutil.rmtree(cache, ignore_errors=True)  # cold, whatever an earlier run left
        options = replace(AccelerationOptions(vram="high"), layout_on_cpu=self.tiny, cache_dir=cache)
        self.reset_peak()
        mark = time.perf_counter()
        engine = self.engine(options)
        engine.load()
        load_s = time.perf_counter() - mark
        resident = self.resident_gib()
        engine.generate(self.request())
        self.sync()
        ready_s = time.perf_counter() - mark
        on = self.timed(engine, self.request(), self.args.runs)
        on_phases = self.phases
        off = self.timed(engine, self.request(sharpness=0.0, adaptive_cfg=30.0, **_NO_ADM), self.args.runs)
        with pytorch_sharpening():
            pytorch_filter = self.timed(engine, self.request(), self.args.runs)
        peak = self.peak_gib()
        small = self.request(width=self.small, height=self.small, steps=self.small_steps)
        self.timed(engine, small, 1)
        small_s = self.timed(engine, small, self.args.runs)
        queue_mark = time.perf_counter()
        self.timed(engine, self.request(), 4)
        queue_s = (time.perf_counter() - queue_mark) / 4
        self.compiled_cache, self.compiled_settings = cache, {}
        cache_saved = save_compile_artifacts(cache / COMPILE_CACHE_FOLDER)
        return {
            "cache_saved": cache_saved,
            "acceleration": engine.describe()["acceleration"],
            "load_and_hash_s": round(load_s, 2),
            "load_steps_s": engine.describe().get("load_steps_s", {}),
            "start_to_ready_s": round(ready_s, 2),
            "process_start_to_ready_s": round(IMPORTS_S + ready_s, 2),
            f"latency_{self.big}_{self.steps}_refinements_on_s": _summary(on),
            f"latency_{self.big}_{self.steps}_refinements_off_s": _summary(off),
            "refinement_cost_pct": round(100 * (statistics.median(on) / statistics.median(off) - 1), 1),
            f"latency_{self.big}_{self.steps}_refinements_on_pytorch_filter_s": _summary(pytorch_filter),
            f"phases_{self.big}_{self.steps}_refinements_on_s": on_phases,
            f"latency_{self.small}_{self.small_steps}_s": _summary(small_s),
            "queue_of_4_s_per_image": round(queue_s, 3),
            "resident_gib": resident,
            "peak_gib": peak,
            "allocated_before_gib": self.allocated_before_gib(),
        }

    def switches(self) -> dict[str, Any]:
        """LoRA and model switches, each as the extra time of an image over a plain one (512², 4 steps)."""
        engine = self.engine(replace(AccelerationOptions(vram="high"), layout_on_cpu=self.tiny))
        engine.load()
        quick = self.request(width=self.small, height=self.small, steps=4)
        self.timed(engine, quick, 1)
        plain = statistics.median(self.timed(engine, quick, 3))
        first_a = self.timed(engine, replace(quick, loras=(("bench_a", 1.0),)), 1)[0]
        first_b = self.timed(engine, replace(quick, loras=(("bench_b", 1.0),)), 1)[0]
        back_a = self.timed(engine, replace(quick, loras=(("bench_a", 1.0),)), 3)
        with_lora = statistics.median(back_a[1:])  # the first image back on ``bench_a`` pays the switch
        folded = bool(engine._components.loras.folded)
        to_other = self.timed(engine, replace(quick, model=self.other), 1)[0]
        to_first = self.timed(engine, replace(quick, model=self.location.name), 1)[0]
        return {
            "image_s": round(plain, 4),
            "lora_first_load_s": round(first_b - with_lora, 3),
            "lora_first_load_incl_unfuse_s": round(first_a - plain, 3),
            "lora_switch_loaded_s": round(back_a[0] - with_lora, 3),
            "lora_per_image_cost_s": round(with_lora - plain, 4),
            "model_switch_s": round(to_other - plain, 2),
            "model_switch_back_s": round(to_first - plain, 2),
            "lora_folded": folded,
            "note": "switch times are the extra time of one image over a plain one; folded LoRAs "
            "(lora_folded) pay at the switch and cost ~0 per image, peft layers pay per step",
        }

    def pause(self) -> dict[str, Any]:
        """What ``fooocusd pause`` gives back (``engine.unload_when_paused``): GPU memory held after
        a default image, after the unload, and the cost of loading again at resume (the next image,
        which captures its CUDA graphs again, against a steady one)."""
        from fooocusd.service.engine_rest import EngineRest

        engine = self.engine(replace(AccelerationOptions(vram="high"), layout_on_cpu=self.tiny))
        engine.load()
        self.timed(engine, self.request(), 2)
        held = self.reserved_gib()
        used = self.device_used_gib()
        rest = EngineRest(engine, load_again=engine.load)
        mark = time.perf_counter()
        rest.rest("pause")
        unload_s = time.perf_counter() - mark
        after = self.reserved_gib()
        allocated_after = self.resident_gib()  # read now: after the wake it is the model's again
        used_after = self.device_used_gib()
        mark = time.perf_counter()
        rest.wake()
        reload_s = time.perf_counter() - mark
        first, *steady = self.timed(engine, self.request(), 3)
        return {
            "reserved_gib_loaded": held,
            "reserved_gib_paused": after,
            "allocated_gib_paused": allocated_after,
            # what nvidia-smi shows taken on the card: the CUDA context, other programs too
            "device_used_gib_loaded": used,
            "device_used_gib_paused": used_after,
            "unload_s": round(unload_s, 3),
            "reload_s": round(reload_s, 2),
            "first_image_after_resume_s": round(first, 3),
            "image_s": round(statistics.median(steady), 3),
        }

    def expansion(self) -> dict[str, Any]:
        from expansion_latency import build_expander, measure, measure_together, through_the_models_forward

        model = "tiny-random" if self.tiny else "gpt2-random"
        expander = build_expander(model, self.device, self.dtype)
        static = measure(expander, count=10, warmup=2)
        growing = measure(through_the_models_forward(expander), count=10, warmup=2)
        together = measure_together(expander, batches=4)
        step = expander.static_step
        return {
            "model": model,
            **static,
            "four_together": together,
            "static_step": step is not None,
            "step_graph_captures": step.captures if step is not None else 0,
            "models_forward": {key: growing[key] for key in ("median_s", "ms_per_token")},
            "speedup": round(growing["median_s"] / static["median_s"], 2) if static["median_s"] else None,
        }

    def encoding(self, cuda_graphs: str = "off") -> dict[str, Any]:
        """Seconds per image in the text encoders (the ``encode`` timing of a one-step 512² image):
        everything encoded afresh (every image before the kept encodings), a new prompt with the
        negative kept (a queue of new jobs), and nothing new (the images of one job); each once with
        one line per side and once with three (a prompt and two style lines; three negatives).
        ``cuda_graphs = "on"`` replays the encoders (and the UNet) as CUDA graphs. The UNet is not
        compiled: only the encoders' time is measured, and compiling would only cost GPU time."""
        options = AccelerationOptions(vram="high", compile="off", cuda_graphs=cuda_graphs)
        engine = self.engine(replace(options, layout_on_cpu=self.tiny))
        engine.load()
        base = self.request(width=self.small, height=self.small, steps=1)
        styled = replace(
            base,
            extra_prompts=("cinematic still, dramatic light", "highly detailed, sharp focus"),
            negative="blurry, text\nlow quality, jpeg artefacts\ncartoon, drawing",
        )
        engine.generate(base)  # warm: the first call of each encoder sets up its kernels
        report: dict[str, Any] = {}
        for label, request in (("one_line", base), ("three_lines", styled)):
            for mode in ("fresh", "negative_kept", "all_kept"):
                engine.encodings.clear()
                if mode != "fresh":  # what earlier jobs left: the negative, or the whole request
                    engine.generate(request if mode == "all_kept" else replace(request, prompt="earlier"))
                seconds = []
                for index in range(max(3, self.args.runs)):
                    if mode == "fresh":
                        engine.encodings.clear()
                    prompt = request.prompt if mode == "all_kept" else self.new_prompt(request.prompt)
                    image = engine.generate(replace(request, seed=request.seed + index, prompt=prompt))
                    seconds.append(image.timings["encode"])
                report[f"{label}_{mode}_s"] = _summary(seconds)
        report["aten_ops_per_line"] = _encoder_ops(engine)
        report["acceleration"] = engine.describe()["acceleration"]
        report["kept_encodings"] = len(engine.encodings)
        report["kept_mib"] = round(engine.encodings.bytes_held / 2**20, 2)
        return report

    def postprocess(self) -> dict[str, Any]:
        """Decoded pixels → a PIL image at 1024² (``--size tiny``: 128²), milliseconds per image:
        diffusers' ``postprocess`` (float copy, NumPy scaling and rounding on the host) against
        ``decode.pixels_to_image`` (8-bit on the device; the same bytes)."""
        from diffusers.image_processor import VaeImageProcessor

        from fooocusd.engine.decode import pixels_to_image

        processor = VaeImageProcessor(vae_scale_factor=8)
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(1, 3, self.big, self.big, generator=generator).to(self.device, self.dtype)
        report: dict[str, Any] = {"dtype": str(self.dtype).removeprefix("torch.")}
        for name, convert in (
            ("diffusers_ms", lambda: processor.postprocess(pixels, output_type="pil")[0]),
            ("on_device_ms", lambda: pixels_to_image(processor, pixels)),
        ):
            convert()
            seconds = []
            for _ in range(max(5, self.args.runs)):
                self.sync()
                started = time.perf_counter()
                convert()
                seconds.append(time.perf_counter() - started)
            report[name] = round(1000 * statistics.median(seconds), 2)
        ours = pixels_to_image(processor, pixels)
        theirs = processor.postprocess(pixels, output_type="pil")[0]
        same = ours.size == theirs.size and np.array_equal(np.asarray(ours), np.asarray(theirs))
        report["same_bytes"] = bool(same)
        return report

    def profile(
        self,
        keep_channels_last: str = "on",
        *,
        small_with_graphs: bool = False,
        fuse_resnet_norms: str = "auto",
    ) -> dict[str, Any]:
        """Where a batch of 4 at full size spends the device's time (``kernel_profile.py``): one
        render of the defaults (text encoding, 8 denoising steps, 4 decodes) under ``torch.profiler``,
        after a warm-up render that compiles. Without CUDA graphs, whose replays would hide which
        operator launched each kernel.

        ``small_with_graphs``: one small image (512², 20 steps) on the defaults, CUDA graphs on, and
        how busy its kernels keep the device: their summed time against the render's wall time
        unprofiled (``device_busy_pct``; at 512² the UNet's steps take 40 % of a 1024² step's time
        for a quarter of its pixels)."""
        from kernel_profile import ELEMENTWISE_OPERATORS, copy_sources, kernel_table, operator_sources
        from torch._C._profiler import _ExperimentalConfig  # verbose: Python frames in the stacks
        from torch.profiler import ProfilerActivity, profile

        graphs = "auto" if small_with_graphs else "off"
        options = AccelerationOptions(
            vram="high",
            cuda_graphs=graphs,
            keep_channels_last=keep_channels_last,
            fuse_resnet_norms=fuse_resnet_norms,
        )
        size = 1 if small_with_graphs else 4
        engine = self.engine(replace(options, layout_on_cpu=self.tiny), batch_size=size)
        engine.load()
        if small_with_graphs:
            shape = {"width": self.small, "height": self.small, "steps": self.small_steps}
        else:
            shape = {"steps": PROFILED_STEPS}
        requests = [self.request(seed=20 + i, **shape) for i in range(size)]
        engine.generate_batch(requests)
        self.sync()
        mark = time.perf_counter()
        engine.generate_batch(requests)
        self.sync()
        wall_ms = (time.perf_counter() - mark) * 1000
        on_device = self.device.type == "cuda"
        activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_device else [])]
        stacks = {"with_stack": True, "experimental_config": _ExperimentalConfig(verbose=True)}
        with profile(activities=activities, **({} if small_with_graphs else stacks)) as profiled:
            engine.generate_batch(requests)
            self.sync()
        table = kernel_table(profiled.key_averages(), device=on_device)
        if not small_with_graphs:
            by_stack = profiled.key_averages(group_by_stack_n=16)
            table["copies_by_caller"] = copy_sources(by_stack)
            table["elementwise_by_caller"] = operator_sources(by_stack, ELEMENTWISE_OPERATORS, top=12)
        acceleration = engine.describe()["acceleration"]
        busy = {"wall_ms_unprofiled": round(wall_ms, 1)}
        if on_device and wall_ms > 0:
            busy["device_busy_pct"] = round(100 * table["total_ms"] / wall_ms, 1)
        return {"acceleration": acceleration, "batch_size": size, **shape, **busy, **table}

    def variant(self, options: AccelerationOptions, keep: bool = False, **overrides: Any) -> dict[str, Any]:
        """One optimisation on its own: start to ready (load + first image) and 1024²/30 latency.
        ``keep`` leaves the engine in ``self.kept`` for a following case."""
        self.reset_peak()
        mark = time.perf_counter()
        engine = self.engine(options, **overrides)
        engine.load()
        engine.generate(self.request())
        self.sync()
        ready = time.perf_counter() - mark
        runs = self.timed(engine, self.request(), self.args.runs)
        if keep:
            self.kept = engine
        return {
            "acceleration": engine.describe()["acceleration"],
            "start_to_ready_s": round(ready, 2),
            f"latency_{self.big}_{self.steps}_s": _summary(runs),
            "peak_gib": self.peak_gib(),
        }

    def fp8(self) -> dict[str, Any]:
        """The same seeds with and without fp8 UNet weights: latency, and how far images and latents move."""
        seeds = (1, 2, 3)
        base = replace(AccelerationOptions(vram="high"), layout_on_cpu=self.tiny)
        variants = (("baseline", base), ("fp8", replace(base, quantize="fp8", quantize_on_cpu=self.tiny)))
        # fp8 scales from bfloat16 weights; on the CPU (fp32 by default) both renders use bfloat16.
        dtype = torch.bfloat16 if self.device.type == "cpu" else self.dtype
        report: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch.")}
        renders: dict[str, dict[str, list[Any]]] = {}
        for label, options in variants:
            self.reset_peak()
            engine = self.engine(options, dtype=dtype)
            engine.load()
            plan = engine.describe()["acceleration"]
            if label == "fp8" and plan["quantize"] != "fp8":
                report["unsupported"] = "; ".join(plan["notes"]) or "fp8 was not applied"
                return report
            resident = self.resident_gib()
            renders[label] = self.seeded(engine, seeds)
            report[label] = {
                "acceleration": plan,
                f"latency_{self.big}_{self.steps}_s": _summary(renders[label]["seconds"]),
                "resident_gib": resident,
                "peak_gib": self.peak_gib(),
            }
            del engine
            _free()
        baseline, fp8 = renders["baseline"], renders["fp8"]
        speedup = statistics.median(baseline["seconds"]) / statistics.median(fp8["seconds"])
        report["speedup"] = round(speedup, 3)
        report["image_difference"] = _differences(baseline["images"], fp8["images"], peak=255.0)
        report["latent_difference"] = _differences(baseline["latents"], fp8["latents"])
        report["note"] = (
            "random weights: the differences show fp8 rounding through the sampler's steps, not image "
            "quality; eager fp8 (no compile) scales every Linear input on the fly"
        )
        return report

    def fp8_matmul(self) -> dict[str, Any]:
        """The UNet's transformer matmuls alone: bf16 against fp8 ways (``fp8_matmul.py``), ms per call."""
        from fp8_matmul import measure_fp8_matmul

        return measure_fp8_matmul(self.device, tiny=self.tiny, runs=self.args.runs * 7)

    def block_autotune(self) -> dict[str, Any]:
        """One transformer block per level compiled as the engine does, and with GEMM autotuning
        (``block_autotune.py``): first-call seconds, ms per call as graph replays."""
        from block_autotune import measure_block_autotune

        return measure_block_autotune(self.device, tiny=self.tiny, runs=self.args.runs * 7)

    def attention_backends(self) -> dict[str, Any]:
        """SDXL's attention shapes alone, each SDPA backend forced (``attention_backends.py``): ms."""
        from attention_backends import measure_attention_backends

        return measure_attention_backends(self.device, tiny=self.tiny, runs=self.args.runs * 7)

    def seeded(self, engine: SDXLEngine, seeds: tuple[int, ...]) -> dict[str, Any]:
        """Warm up, then render each seed once: seconds, decoded pixels (float) and final latents."""
        engine.generate(self.request(seed=seeds[0] + 100))
        vae = engine._pipeline.vae  # type: ignore[union-attr]
        captured: list[torch.Tensor] = []
        decode = vae.decode

        def capturing_decode(latents: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            captured.append(latents.detach().float().cpu())
            return decode(latents, *args, **kwargs)

        vae.decode = capturing_decode
        seconds, images = [], []
        try:
            for seed in seeds:
                self.sync()
                mark = time.perf_counter()
                image = engine.generate(self.request(seed=seed)).image
                self.sync()
                seconds.append(round(time.perf_counter() - mark, 4))
                images.append(torch.from_numpy(np.asarray(image, dtype=np.float32)))
        finally:
            vae.decode = decode
        return {"seconds": seconds, "images": images, "latents": captured}

    def compiled(self, target: str) -> dict[str, Any]:
        """torch.compile, cold (empty cache folder) and warm (same folder, dynamo forgotten)."""
        cache = self.work / f"compile-cache-{target}"
        options = replace(OFF, compile=target, cache_dir=cache)
        cold = self.variant(options)
        torch._dynamo.reset()
        _free()
        warm = self.variant(options)
        return {"cold": cold, "warm_cache": warm}

    def batched(
        self,
        options: AccelerationOptions = OFF,
        size: int = 4,
        *,
        also_compile: tuple[str, ...] = (),
        attention: str = "auto",
        compare_fusion: bool = False,
        group_norms: str = "",
        fused_norm_shapes: str = "",
        fold_biases: bool = True,
        upsample_form: str = "",
    ) -> dict[str, Any]:
        """``size`` images in one UNet batch (different seeds and prompts), per image, against one alone.
        ``also_compile``: UNet module classes compiled too, beside regional compile's transformer
        blocks (an experiment: the engine has no setting for it yet). ``compare_fusion``: one seed
        with the resnets' GroupNorm + SiLU fused against diffusers' resnets (``fusion_agreement``).
        ``group_norms``: the kept GroupNorms run this way instead (``route_group_norms``, an experiment).
        ``fused_norm_shapes``: the fused resnet norms compiled with these shapes instead (an experiment,
        ``fused_resnet.SHAPES``). ``fold_biases=False``: the fused resnets' convolutions add their own
        biases (an experiment: what folding them saves). ``upsample_form``: the upsamplers routed in
        this form instead (``subpixel_upsample.FORMS``, an experiment)."""
        self.reset_peak()
        mark = time.perf_counter()
        engine = self.engine(options, batch_size=size, attention=attention)
        engine.load()
        compiled_also = compile_modules(engine, also_compile) if also_compile else {}
        if group_norms:
            compiled_also[f"group_norms_{group_norms}"] = route_group_norms(engine, group_norms)
        if fused_norm_shapes:
            compiled_also[f"fused_resnets_{fused_norm_shapes}"] = fuse_again(
                engine, kernel="compiled", shapes=fused_norm_shapes
            )
        if not fold_biases:
            compiled_also["fused_resnets_biases_unfolded"] = fuse_again(engine, fold_biases=False)
        if upsample_form:
            compiled_also[f"upsamplers_{upsample_form}"] = upsample_again(engine, upsample_form)
        prompts = ("a lighthouse on a rocky coast at dusk", "a red fox in fresh snow", "an old tram, rain")
        requests = [self.request(seed=10 + i, prompt=prompts[i % len(prompts)]) for i in range(size)]
        engine.generate_batch(requests)  # warm-up (and compilation, when compiled)
        self.sync()
        ready = time.perf_counter() - mark
        self.timed(engine, self.request(), 1)  # warm-up of the single-image shape
        alone = self.timed(engine, self.request(), self.args.runs)
        alone_phases = self.phases
        per_image = []
        for run in range(self.args.runs):
            batch = [
                replace(request, seed=request.seed + 100 * (run + 1), prompt=self.new_prompt(request.prompt))
                for request in requests
            ]  # new prompts, as a queue of new jobs has: kept encodings would hide the encoders' cost
            self.sync()
            started = time.perf_counter()
            engine.generate_batch(batch)
            self.sync()
            per_image.append(round((time.perf_counter() - started) / size, 4))
        small = self.request(width=self.small, height=self.small, steps=self.small_steps)
        self.timed(engine, small, 1)
        small_s = self.timed(engine, small, self.args.runs)
        agreement = self.graphs_agreement(engine)
        if compare_fusion:
            agreement.update(self.fusion_agreement(engine))
        return {
            **agreement,
            **compiled_also,
            "acceleration": engine.describe()["acceleration"],
            "start_to_ready_s": round(ready, 2),
            f"latency_{self.big}_{self.steps}_alone_s": _summary(alone),
            f"phases_{self.big}_{self.steps}_alone_s": alone_phases,
            f"batch_of_{size}_s_per_image": _summary(per_image),
            f"latency_{self.small}_{self.small_steps}_s": _summary(small_s),
            f"phases_{self.small}_{self.small_steps}_s": self.phases,
            "peak_gib": self.peak_gib(),
            "peak_reserved_gib": self.peak_reserved_gib(),
            "allocated_before_gib": self.allocated_before_gib(),
        }

    def cudnn_benchmarked(self, options: AccelerationOptions) -> dict[str, Any]:
        """``batched`` with cuDNN timing its convolution algorithms for each new shape
        (``torch.backends.cudnn.benchmark``) instead of picking them by its heuristics: faster
        kernels, against the time the first image of each size spends trying them (its
        ``start_to_ready_s``)."""
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return self.batched(options)
        finally:
            torch.backends.cudnn.benchmark = before

    def fast(self) -> dict[str, Any]:
        """Regional compile + channels_last + fused QKV + batches of 4, compiled cold into the cache
        folder the daemon of the ``queue_compiled`` case reads, so that case starts warm."""
        options = replace(
            AccelerationOptions(vram="high", compile="unet", cache_dir=self.queue_cache()),
            layout_on_cpu=self.tiny,
        )
        return self.batched(options)

    def graphs_agreement(self, engine: SDXLEngine) -> dict[str, Any]:
        """With CUDA graphs on: one seed rendered through the graphs and without them (same engine),
        and how far the pixels move (the capture check compares one UNet call; this, a whole image)."""
        accelerator = engine._accelerator
        graphs = accelerator.graphs
        if graphs is None:
            return {}
        request = self.request(seed=77)
        pixels = []
        try:
            for use in (graphs, None):
                accelerator.graphs = use
                pixels.append(torch.from_numpy(np.asarray(engine.generate(request).image, dtype=np.float32)))
        except Exception as exc:  # the case's timings stand without this check
            return {"graphs_vs_eager": f"error: {type(exc).__name__}: {exc}"[:300]}
        finally:
            accelerator.graphs = graphs
        return {"graphs_vs_eager": _differences([pixels[1]], [pixels[0]], peak=255.0)}

    def fusion_agreement(self, engine: SDXLEngine) -> dict[str, Any]:
        """One seed rendered with diffusers' own modules and with ours (same engine), and how far
        the pixels move: the fused resnets (``fuse_resnet_norms``) and the phase-kernel upsamplers
        (``subpixel_upsample``), each where it is on."""
        from fooocusd.engine.fused_resnet import fuse_resnet_norms, unfuse_resnet_norms
        from fooocusd.engine.subpixel_upsample import install_subpixel_upsampling, undo_subpixel_upsampling

        plan = engine._accelerator.plan
        if plan is None:
            return {}
        agreement = {}
        if plan.fuse_resnet_norms:
            kernel = plan.fused_norm_kernel
            redo = functools.partial(fuse_resnet_norms, kernel=kernel)
            agreement["fused_resnets_vs_diffusers"] = self.agreement(engine, unfuse_resnet_norms, redo)
        if plan.subpixel_upsample:
            undo, redo = undo_subpixel_upsampling, install_subpixel_upsampling
            agreement["subpixel_upsample_vs_diffusers"] = self.agreement(engine, undo, redo)
        return agreement

    def agreement(
        self, engine: SDXLEngine, undo: Callable[[Any], int], redo: Callable[[Any], int]
    ) -> dict[str, Any]:
        """One seed rendered after ``undo`` on the UNet and VAE, then after ``redo``: the difference."""
        pipeline = engine._pipeline
        request = self.request(seed=77)
        pixels = []
        for use in (undo, redo):
            use(pipeline.unet)
            use(pipeline.vae)
            if engine._accelerator.graphs is not None:
                engine._accelerator.graphs.clear()  # the captured kernels are the other path's
            pixels.append(torch.from_numpy(np.asarray(engine.generate(request).image, dtype=np.float32)))
        return _differences([pixels[1]], [pixels[0]], peak=255.0)

    def queue_cache(self) -> Path:
        return self.work / "queue-compiled" / "state" / "cache"

    def queue(self, name: str, *, expansion: bool = False, **engine_settings: Any) -> dict[str, Any]:
        """The whole daemon on a queue of one-image prompt files (``queue_throughput.py``).
        ``expansion``: every job asks for "Fooocus V2", expanded by a random GPT-2 small (the
        tiny one on ``--size tiny``) loaded from a folder, as a user's would be."""
        from queue_throughput import extra_cost_pct, measure_queue

        work = self.work / name
        generation: dict[str, Any] = {}
        if expansion:
            from expansion_latency import write_expander_folder

            model = "tiny-random" if self.tiny else "gpt2-random"
            folders = self.work / "models" / "prompt_expansion"
            folder = write_expander_folder(model, folders / model, self.dtype)
            engine_settings["expansion"] = str(folder)
            generation["styles"] = ["Fooocus V2"]
        model = "tiny-random" if self.tiny else str(self.location.path)
        batch = engine_settings.pop("batch_size", 4 if not self.tiny else 2)
        background = engine_settings.pop("background_writes", True)
        result = measure_queue(
            work,
            model=model,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            jobs=self.args.queue_jobs,
            width=1024,
            height=1024,
            steps=self.steps,
            settings={
                "engine": {"batch_size": batch, **engine_settings},
                "outbox": {"background_writes": background},
                "generation": generation,
            },
        )
        record = {"batch_size": batch, "background_writes": background, **engine_settings, **result}
        if expansion and (cost := extra_cost_pct(self.report["cases"].get("queue", {}), result)) is not None:
            record["expansion_cost_pct"] = cost  # against `queue`, the same jobs without expansion
        return record

    def low_vram(self) -> dict[str, Any]:
        steps = min(self.args.low_vram_steps, self.steps)
        self.reset_peak()
        mark = time.perf_counter()
        engine = self.engine(AccelerationOptions(vram="low"))
        engine.load()
        load_s = time.perf_counter() - mark
        resident = self.resident_gib()
        runs = self.timed(engine, self.request(steps=steps), 2)
        return {
            "acceleration": engine.describe()["acceleration"],
            "load_s": round(load_s, 2),
            "resident_gib": resident,
            f"latency_{self.big}_{steps}_steps_s": runs,
            "peak_gib": self.peak_gib(),
        }

    def compiled_latency(self, target: str, mode: str, cuda_graphs: str = "off") -> dict[str, Any]:
        """``compile = target`` in ``mode`` on top of the defaults, cold: start to ready (load + the
        first 1024² image, which compiles), then latency. The engine stays for ``compiled_small``,
        and the compile cache is saved at once, for the ``warm_start`` process to read (with the
        same settings)."""
        from fooocusd.engine.acceleration import COMPILE_CACHE_FOLDER, save_compile_artifacts

        self.compiled_cache = self.work / f"compile-cache-{target}-{mode}"
        options = replace(
            AccelerationOptions(vram="high", compile=target, compile_mode=mode, cuda_graphs=cuda_graphs),
            cache_dir=self.compiled_cache,
            layout_on_cpu=self.tiny,
        )
        self.compiled_settings = {"compile": target, "compile_mode": mode, "cuda_graphs": cuda_graphs}
        result = self.variant(options, keep=True)
        result["cache_saved"] = save_compile_artifacts(self.compiled_cache / COMPILE_CACHE_FOLDER)
        return result

    def compiled_small(self) -> dict[str, Any]:
        """The compiled engine of ``compiled_latency`` at 512², 20 steps: the first image compiles."""
        engine = self.kept
        if engine is None:
            return {"skipped": "no compiled engine (its case did not run)"}
        small = self.request(width=self.small, height=self.small, steps=self.small_steps)
        first = self.timed(engine, small, 1)[0]
        runs = self.timed(engine, small, self.args.runs)
        self.kept = None
        return {
            f"first_{self.small}_{self.small_steps}_incl_compile_s": first,
            f"latency_{self.small}_{self.small_steps}_s": _summary(runs),
            "peak_gib": self.peak_gib(),
        }

    def warm_start(self) -> dict[str, Any]:
        """A fresh daemon process on the compile cache the last of ``defaults`` or ``compiled_latency``
        saved, with its settings: process start to the first image written (imports, load + hash,
        compiled graphs from disk), then its queue; with the daemon's own account of its start
        (``start_steps_s``, ``model_load_steps_s``) and, when its imports were slow, where they went."""
        import subprocess

        cache = getattr(self, "compiled_cache", None)
        if cache is None:
            return {"skipped": "no compile cache (neither defaults nor a compiled case ran before it)"}
        out = self.work / "warm-start-report"
        command = [
            sys.executable,
            str(ROOT / "bench" / "queue_throughput.py"),
            "--model",
            "tiny-random" if self.tiny else str(self.location.path),
            "--device",
            str(self.device),
            "--jobs",
            str(self.args.warm_start_jobs),
            "--size",
            "1024",  # tiny-random renders its own fraction of it
            "--steps",
            str(self.steps),
            "--workdir",
            str(self.work / "warm-start"),
            "--out",
            str(out),
            "--set",
            "engine.batch_size=1",
            *(f"--set=engine.{key}={value}" for key, value in self.compiled_settings.items()),
        ]
        # A daemon that ran before has its model hashes cached next to its compiled code: start as one.
        hashes = self.work / "hashes.json"
        if hashes.is_file():
            cache.mkdir(parents=True, exist_ok=True)  # (nothing was compiled into it on a CPU)
            shutil.copyfile(hashes, cache / HASH_CACHE_NAME)
        environment = {**os.environ, "CACHE_DIRECTORY": str(cache)}
        # This process pinned the kernel caches to the first cache folder a case named; a restarted
        # daemon finds everything in its own folder: copy them there, and let it configure its own.
        for variable, folder in KERNEL_CACHES.items():
            pinned = environment.pop(variable, "")
            if pinned and Path(pinned).is_dir() and Path(pinned) != cache / folder:
                shutil.copytree(pinned, cache / folder, dirs_exist_ok=True)
        environment.pop("TORCHINDUCTOR_CACHE_DIR", None)
        mark = time.perf_counter()
        done = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=self.args.warm_start_timeout_s
        )
        wall = round(time.perf_counter() - mark, 2)
        if done.returncode != 0:
            return {"error": f"exit {done.returncode}: {done.stderr[-400:]}", "wall_s": wall}
        report = json.loads((out / "queue_throughput.json").read_text())
        imports_s = report.get("start_steps_s", {}).get("interpreter and imports", 0.0)
        if imports_s >= IMPORT_PROFILE_FROM_S:  # slow imports: which packages (costs one more import)
            from import_profile import profile_imports

            try:
                report["import_profile"] = profile_imports(env=environment, timeout=IMPORT_PROFILE_TIMEOUT_S)
            except (OSError, subprocess.SubprocessError) as exc:  # the start's figures stand without it
                report["import_profile"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        return {**self.compiled_settings, "batch_size": 1, "process_wall_s": wall, **report}

    def cases(self) -> dict[str, Callable[[], dict[str, Any]]]:
        """Every case by name, in the default order: most telling first (a GPU session may end early)."""
        defaults = replace(AccelerationOptions(vram="high"), layout_on_cpu=self.tiny)
        other = "float16" if self.dtype == torch.bfloat16 else "bfloat16"
        cases: dict[str, Callable[[], dict[str, Any]]] = {
            "setup": self.setup,
            SELFTEST_CRASH: _crash,
            "defaults": self.defaults,
            "batch_4": lambda: self.batched(defaults, compare_fusion=True),
            "batch_4_unfused": lambda: self.batched(replace(defaults, fuse_resnet_norms="off")),
            "batch_4_biases_unfolded": lambda: self.batched(defaults, fold_biases=False),
            "batch_4_group_norms_pytorch": lambda: self.batched(defaults, group_norms="eager"),
            "batch_4_upsample_plain": lambda: self.batched(replace(defaults, subpixel_upsample="off")),
            "batch_4_upsample_transposed": lambda: self.batched(defaults, upsample_form="transposed"),
            "batch_4_fused_compiled": lambda: self.batched(defaults, fused_norm_shapes="per_channel_count"),
            "batch_4_fused_static": lambda: self.batched(defaults, fused_norm_shapes="static"),
            "batch_4_fused_dynamic": lambda: self.batched(defaults, fused_norm_shapes="dynamic"),
            "profile_unfused": lambda: self.profile(fuse_resnet_norms="off"),
            "queue_unfused": lambda: self.queue("queue-unfused", fuse_resnet_norms="off"),
            "batch_4_nchw": lambda: self.batched(replace(defaults, channels_last=False)),
            "batch_4_resnets_compiled": lambda: self.batched(defaults, also_compile=RESNET_MODULES),
            "batch_4_cudnn_benchmark": lambda: self.cudnn_benchmarked(defaults),
            "batch_4_sdpa": lambda: self.batched(defaults, attention="sdpa"),
            "batch_4_sdpa_cudnn": lambda: self.batched(defaults, attention="sdpa_cudnn"),
            # cuDNN first with q, k and v from separate projections: if cuDNN refuses the fused
            # layout, this is the layout in which it can run (5 % faster on the H100, tenth session)
            "batch_4_sdpa_cudnn_unfused_qkv": lambda: self.batched(
                replace(defaults, fuse_qkv=False), attention="sdpa_cudnn"
            ),
            "batch_4_flash4": lambda: self.batched(defaults, attention="sdpa_flash4"),
            "batch_4_autotuned_blocks": lambda: self.batched(
                replace(defaults, compile_mode="max-autotune-no-cudagraphs")
            ),
            "batch_8": lambda: self.batched(defaults, size=8),
            "profile": self.profile,
            "profile_copies": lambda: self.profile(keep_channels_last="off"),
            "profile_small_graphs": lambda: self.profile(small_with_graphs=True),
            "batch_4_copies": lambda: self.batched(replace(defaults, keep_channels_last="off")),
            "batch_4_compiled_group_norm": lambda: self.batched(defaults, group_norms="compiled"),
            "graphs": lambda: self.batched(replace(defaults, cuda_graphs="on")),
            "graphs_resnets_compiled": lambda: self.batched(
                replace(defaults, cuda_graphs="on"), also_compile=RESNET_MODULES
            ),
            "graphs_batch_8": lambda: self.batched(replace(defaults, cuda_graphs="on"), size=8),
            "graphs_eager": lambda: self.batched(replace(defaults, compile="off", cuda_graphs="on")),
            "queue_graphs": lambda: self.queue("queue-graphs", cuda_graphs="on"),
            "queue": lambda: self.queue("queue"),
            "queue_copies": lambda: self.queue("queue-copies", keep_channels_last="off"),
            "queue_decode_at_once": lambda: self.queue("queue-decode-at-once", overlap_decode="off"),
            "queue_expansion": lambda: self.queue("queue-expansion", expansion=True),
            "queue_expansion_ahead": lambda: self.queue(
                "queue-expansion-ahead", expansion=True, expand_ahead="on"
            ),
            "fast_compiled_batch_4": self.fast,
            "queue_compiled": lambda: self.queue("queue-compiled", compile="unet"),
            "compiled_full_graphs": lambda: self.compiled_latency("unet_full", "reduce-overhead"),
            "warm_start": self.warm_start,
            "compiled_full_graphs_small": self.compiled_small,
            "compiled_blocks": lambda: self.compiled_latency("unet", "default"),
            "compiled_blocks_cuda_graphs": lambda: self.compiled_latency("unet", "default", cuda_graphs="on"),
            "fp8": self.fp8,
            "fp8_matmul": self.fp8_matmul,
            "attention_backends": self.attention_backends,
            "block_autotune": self.block_autotune,
            "low_vram": self.low_vram,
            "queue_one_by_one_inline": lambda: self.queue(
                "queue-inline", batch_size=1, background_writes=False
            ),
            "switches": self.switches,
            "pause": self.pause,
            "expansion": self.expansion,
            "encoding": self.encoding,
            "postprocess": self.postprocess,
            "encoding_graphs": lambda: self.encoding(cuda_graphs="on"),
            "plain": lambda: self.variant(OFF),
            "channels_last": lambda: self.variant(replace(OFF, channels_last=True)),
            "fuse_qkv": lambda: self.variant(replace(OFF, fuse_qkv=True)),
            "compile_unet_blocks": lambda: self.compiled("unet"),
        }
        if _xformers_importable():
            cases["xformers"] = lambda: self.variant(OFF, attention="xformers")
        if self.device.type == "cuda" or other == "bfloat16":  # (fp16 on a CPU is not worth timing)
            cases[other] = lambda: self.variant(OFF, dtype=other)
        cases["compile_unet_full"] = lambda: self.compiled("unet_full")
        return cases

    def run(self) -> None:
        cases = self.cases()
        if self.args.cases:
            wanted = [name.strip() for name in self.args.cases.split(",") if name.strip()]
            unknown = sorted(set(wanted) - set(cases))
            if unknown:
                raise SystemExit(f"unknown cases {unknown}; known: {', '.join(cases)}")
        else:
            wanted = [
                name
                for name in cases
                if name != SELFTEST_CRASH and (name != "compile_unet_full" or self.args.compile_full)
            ]
        if wanted[:1] != ["setup"]:
            wanted.insert(0, "setup")
        if self.report.get("restarts"):
            self.record_restart_setup(self.setup())
            wanted = [name for name in wanted if name not in self.report["cases"]]
        for name in wanted:
            self.case(name, cases[name])
            if name == "setup" and "error" in self.report["cases"]["setup"]:
                return


_NO_ADM = {"adm_scaler_positive": 1.0, "adm_scaler_negative": 1.0, "adm_scaler_end": 0.0}


def build_source(tiny: bool, device: torch.device, dtype: torch.dtype) -> Any:
    """The pipeline whose random weights become the checkpoint: real SDXL on the device, or tiny-random."""
    if tiny:
        from fooocusd.engine.tiny import build_tiny_sdxl_pipeline

        return build_tiny_sdxl_pipeline(_default_scheduler(SDXL_CONFIG_DIR))
    return build_fullsize(str(device), dtype)


def build_fullsize(device: str, dtype: torch.dtype) -> Any:
    """SDXL base at full size from the configs fooocusd ships, random weights, built on ``device``."""
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    config = SDXL_CONFIG_DIR
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(config / "text_encoder_2")
        )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(config / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(config / "tokenizer_2"),
        unet=unet,
        scheduler=_default_scheduler(config),
        add_watermarker=False,
    )
    return pipeline.to(dtype=dtype)


def write_random_lora(pipeline: Any, path: Path, seed: int) -> None:
    """A rank-8 LoRA on every UNet attention projection, in the diffusers layout, with random weights."""
    from diffusers import StableDiffusionXLPipeline

    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, torch.Tensor] = {}
    for name, module in pipeline.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(LORA_TARGETS):
            down = torch.randn(LORA_RANK, module.in_features, generator=generator) * 0.01
            up = torch.randn(module.out_features, LORA_RANK, generator=generator) * 0.01
            layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = down, up
    scratch = path.parent / f".{path.stem}-save"
    StableDiffusionXLPipeline.save_lora_weights(scratch, unet_lora_layers=layers, weight_name=path.name)
    (scratch / path.name).replace(path)
    scratch.rmdir()


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# fooocusd benchmark",
        "",
        f"**{report['label']}**",
        "",
        f"Device: {report['device_name']} ({report['device']}), dtype {report['dtype']}, "
        f"{report['runs']} measured runs per latency after one warm-up; wall {report.get('wall_s')} s. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        "",
        *(
            f"Restarted in a fresh process after the case {restart['after_case'] or '(none)'}.\n"
            for restart in report.get("restarts", [])
        ),
        "| case | measure | value |",
        "|---|---|---|",
    ]
    for case, values in report["cases"].items():
        for key, value in _flatten(values):
            lines.append(f"| {case} | {key} | {_cell(value)} |")
    lines.extend(targets_markdown(_target_rows(report)))
    return "\n".join(lines) + "\n"


def _target_rows(report: dict[str, Any]) -> list[TargetRow]:
    return target_rows(report, Sizes(**report["sizes"])) if "sizes" in report else []


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        if key == "acceleration" and isinstance(value, dict):
            applied = [k for k in ("channels_last", "fuse_qkv") if value.get(k)]
            label = f"vram {value.get('vram')}, vae {value.get('vae_dtype')}, compile {value.get('compile')}"
            if value.get("keep_channels_last"):
                kept = value.get("kept_channels_last", {})
                label += (
                    f", channels_last kept ({kept.get('group_norms')} GroupNorms, "
                    f"{kept.get('transformer_outputs')} transformer outputs)"
                )
            if value.get("fuse_resnet_norms"):
                kernel = value.get("fused_norm_kernel")
                label += f", {value.get('fused_resnets')} resnets' norms fused ({kernel})"
            if value.get("quantize", "off") != "off":
                label += f", {value['quantize']} ({value.get('quantized_layers')} layers)"
            if value.get("cuda_graphs"):
                label += (
                    f", CUDA graphs ({value.get('cuda_graph_captures', 0)} captured, "
                    f"{len(value.get('cuda_graph_eager_buckets', []))} left eager)"
                )
            rows.append((prefix + key, ", ".join([label, *applied])))
            rows.extend((f"{prefix}{key}.note", note) for note in value.get("cuda_graph_eager_buckets", []))
        elif isinstance(value, dict) and not {"median", "runs"} <= set(value):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((prefix + key, value))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and "median" in value:
        return f"median {value['median']} (runs {', '.join(str(r) for r in value['runs'])})"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value).replace("|", "/")


def _differences(
    reference: list[torch.Tensor], other: list[torch.Tensor], peak: float | None = None
) -> dict[str, Any]:
    """PSNR (dB; peak: 255 for pixels, else the reference's value range) and max abs difference, per seed."""
    psnr, max_abs = [], []
    for ref, out in zip(reference, other, strict=True):
        error = (out - ref).pow(2).mean().item()
        top = peak if peak is not None else (ref.max() - ref.min()).item()
        psnr.append(round(10 * math.log10(top**2 / error), 2) if error > 0 else float("inf"))
        max_abs.append(round((out - ref).abs().max().item(), 4))
    return {"psnr_db": psnr, "max_abs": max_abs, "min_psnr_db": min(psnr), "worst_max_abs": max(max_abs)}


RESNET_MODULES = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
"""The UNet's convolution blocks: GroupNorm, SiLU, convolutions, the residual add (eager under
regional compile, which compiles the transformer blocks only)."""


def compile_modules(engine: SDXLEngine, classes: tuple[str, ...]) -> dict[str, Any]:
    """Compile every UNet module of these classes the way regional compile compiles its blocks
    (same mode, static shapes); the first render then compiles them."""
    plan = engine._accelerator.plan
    unet = engine._pipeline.unet  # type: ignore[union-attr]
    if plan is None or plan.compile == "off":
        return {"also_compiled": "nothing: compile is off"}
    counts: dict[str, int] = {}
    for module in unet.modules():
        name = type(module).__name__
        if name in classes:
            module.compile(mode=plan.compile_mode, dynamic=plan.compile_dynamic)
            counts[name] = counts.get(name, 0) + 1
    return {"also_compiled": counts}


def route_group_norms(engine: SDXLEngine, norm: str) -> dict[str, int] | str:
    """Route the UNet's and VAE's kept channels_last GroupNorms (the transformers' and the other
    unfused ones) through ``norm`` (``keep_channels_last.GROUP_NORM_FORWARDS``) instead of the
    engine's choice; "compiled" compiles them in the first render."""
    from fooocusd.engine.keep_channels_last import keep_channels_last, undo_keep_channels_last

    plan = engine._accelerator.plan
    pipeline = engine._pipeline
    if plan is None or not plan.keep_channels_last or pipeline is None:
        return "nothing: activations are not kept channels_last here"
    counts = {}
    for name in ("unet", "vae"):
        model = getattr(pipeline, name)
        undo_keep_channels_last(model)
        counts[name] = keep_channels_last(model, norm=norm).group_norms
    return counts


def fuse_again(
    engine: SDXLEngine, *, kernel: str = "", shapes: str = "per_channel_count", fold_biases: bool = True
) -> int | str:
    """The UNet's and VAE's resnets fused again with ``kernel`` (the engine's when ""), inductor's
    ``shapes`` for "compiled" (``fused_resnet.SHAPES``) and ``fold_biases`` as given."""
    from fooocusd.engine.fused_resnet import fuse_resnet_norms, unfuse_resnet_norms

    plan = engine._accelerator.plan
    pipeline = engine._pipeline
    if plan is None or not plan.fuse_resnet_norms or pipeline is None:
        return "nothing: the resnets' norms are not fused here"
    fused = 0
    for model in (pipeline.unet, pipeline.vae):
        unfuse_resnet_norms(model)
        kernel = kernel or plan.fused_norm_kernel
        fused += fuse_resnet_norms(model, kernel=kernel, shapes=shapes, fold_biases=fold_biases)
    return fused


@contextlib.contextmanager
def pytorch_sharpening() -> Iterator[None]:
    """Sharpness through PyTorch's operators (``guidance.joint_bilateral_blur``) instead of the
    Triton kernel that a GPU runs (``triton_bilateral.py``): what the kernel saves."""
    from fooocusd.engine import triton_bilateral

    runs_on = triton_bilateral.runs_on
    triton_bilateral.runs_on = lambda eps, kernel_size: False
    try:
        yield
    finally:
        triton_bilateral.runs_on = runs_on


def upsample_again(engine: SDXLEngine, form: str) -> int | str:
    """The UNet's and VAE's upsamplers routed in ``form`` (``subpixel_upsample.FORMS``) instead."""
    from fooocusd.engine.subpixel_upsample import install_subpixel_upsampling, undo_subpixel_upsampling

    pipeline = engine._pipeline
    if pipeline is None:
        return "nothing: no pipeline"
    routed = 0
    for model in (pipeline.unet, pipeline.vae):
        undo_subpixel_upsampling(model)
        routed += install_subpixel_upsampling(model, form=form)
    return routed


def _encoder_ops(engine: SDXLEngine) -> int:
    """PyTorch operations one prompt line's encoding dispatches (both encoders, eager): each is a
    kernel launch or a host-side step Python pays for."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from fooocusd.engine.conditioning import encode_workloads

    class Counting(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            Counting.calls += 1
            return func(*args, **(kwargs or {}))

    pipeline = engine._pipeline
    with torch.inference_mode(), Counting():
        encode_workloads(pipeline, ["a line never encoded before"], clip_skip=2, device=engine._device)
    return Counting.calls


def _summary(runs: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(runs), 4), "runs": runs}


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def _auto_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16


def _xformers_importable() -> bool:
    try:
        import xformers  # noqa: F401
    except ImportError:
        return False
    return True


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    versions = {
        "fooocusd": fooocusd.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    for package in ("flash-attn-4", "nvidia-cutlass-dsl-libs-core"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _crash() -> dict[str, Any]:
    os.abort()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--runs", type=int, default=3, help="measured runs per latency (median reported)")
    parser.add_argument("--low-vram-steps", type=int, default=10, help="steps of the low-VRAM images")
    parser.add_argument("--queue-jobs", type=int, default=12, help="prompt files per daemon queue case")
    parser.add_argument("--compile-full", action="store_true", help="also compile the whole UNet (minutes)")
    parser.add_argument("--cases", default="", help="comma-separated cases, in order")
    parser.add_argument("--warm-start-jobs", type=int, default=6, help="jobs of warm_start's daemon")
    parser.add_argument("--warm-start-timeout-s", type=float, default=150.0)
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no case after this many seconds")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="checkpoints and caches (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for fooocusd_bench.json and .md")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the cases of the report already in --out and run only the others (after a crash)",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA GPU")
    if args.device == "cpu":
        torch.set_num_threads(1)  # tiny tensors: more threads only wait on each other
    Bench(args).run()
    print((args.out / "fooocusd_bench.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
