"""The benchmark that runs on the GPU machine keeps working: its CPU plumbing run, on tiny-random.

GPU time is scarce (one short call per session), so a case that broke since the last GPU run would
waste it. This runs the script end to end on the CPU with a few cases and checks the report it
writes; the figures themselves are not performance numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_benchmark_writes_a_report_with_every_requested_case(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "bench" / "fooocusd_bench.py"),
        "--device=cpu",
        "--size=tiny",
        "--runs=1",
        "--queue-jobs=2",
        "--cases=defaults,queue,low_vram,fp8_matmul,expansion,profile,queue_expansion,encoding,postprocess,"
        "attention_backends,block_autotune,warm_start,pause",
        f"--workdir={tmp_path / 'work'}",
        f"--out={out}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "fooocusd_bench.json").read_text())
    cases = report["cases"]
    assert list(cases) == [  # setup first, unasked
        "setup",
        "defaults",
        "queue",
        "low_vram",
        "fp8_matmul",
        "expansion",
        "profile",
        "queue_expansion",
        "encoding",
        "postprocess",
        "attention_backends",
        "block_autotune",
        "warm_start",
        "pause",
    ]
    assert not [name for name, case in cases.items() if "error" in case or "skipped" in case], cases
    assert cases["defaults"]["latency_128_6_refinements_on_s"]["median"] > 0
    assert cases["queue"]["images"] == 2 and cases["queue"]["first_image_s"] > 0
    assert 0 < cases["queue"]["ready_s"] <= cases["queue"]["first_image_s"]  # READY=1 came first
    assert cases["queue"]["start_steps_s"]["model"] > 0  # the daemon's own account of its start
    assert "attention chosen" in cases["queue"]["model_load_steps_s"]
    assert "checkpoint read" in cases["defaults"]["load_steps_s"]
    # a restarted daemon on the cache `defaults` kept, telling where its start went
    assert cases["warm_start"]["images"] == cases["warm_start"]["expected"]
    assert cases["warm_start"]["start_steps_s"]["interpreter and imports"] > 0
    assert cases["low_vram"]["acceleration"]["vram"] == "low"
    assert cases["pause"]["reload_s"] > 0 and cases["pause"]["first_image_after_resume_s"] > 0
    assert set(cases["defaults"]["phases_128_6_refinements_on_s"]) == {"encode", "denoise", "decode"}
    for shape, methods in cases["fp8_matmul"].items():
        timings = [methods[name] for name in ("bf16", "scaled_mm", "rowwise_eager", "rowwise_compiled")]
        assert all(isinstance(ms, float) and ms > 0 for ms in timings), (shape, methods)
    assert cases["expansion"]["static_step"] is True
    assert cases["expansion"]["median_s"] > 0 and cases["expansion"]["models_forward"]["median_s"] > 0
    assert cases["profile"]["clock"] == "cpu" and len(cases["profile"]["top"]) == 25
    assert 99 <= sum(cases["profile"]["by_kind_pct"].values()) <= 101
    encoding = cases["encoding"]
    assert encoding["one_line_all_kept_s"]["median"] < encoding["one_line_fresh_s"]["median"]
    assert encoding["kept_encodings"] > 0
    assert cases["postprocess"]["same_bytes"] is True
    attention = cases["attention_backends"]
    assert attention["timed_as"] == "wall clock"  # CUDA graph replays on a GPU
    shapes = {shape: timings for shape, timings in attention.items() if isinstance(timings, dict)}
    assert len(shapes) == 4 and {"b2_h2_q64_k64", "b2_h2_q64_k64_fused_qkv"} <= set(shapes)
    for shape, timings in shapes.items():
        assert isinstance(timings["default"], float) and timings["fastest"] in timings, (shape, timings)
    assert "convolution" in cases["profile"]["by_kind_pct"]
    block = cases["block_autotune"]["tiny"]  # (eager on a CPU: both modes run the same block)
    for mode in cases["block_autotune"]["modes"]:
        assert block[mode]["ms_per_call"] > 0 and block[mode]["max_abs_vs_eager"] == 0.0, block
    expanded = cases["queue_expansion"]
    assert expanded["expanded_images"] == 2 and "expand_ahead" not in expanded, expanded  # the default
    markdown = (out / "fooocusd_bench.md").read_text()
    assert "| defaults | start_to_ready_s |" in markdown
    targets = {row["target"]: row for row in report["targets"]}  # tiny sizes: 128² for 1024², 64² for 512²
    assert (
        targets["one 128² image, 6 steps"]["case"] == "defaults"
        and targets["one 128² image, 6 steps"]["best"] > 0
    )
    assert "## Against issue 6's targets" in markdown

    setup_only = [*[part for part in command if not part.startswith("--cases=")], "--cases=setup"]
    again = subprocess.run(setup_only, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads((out / "fooocusd_bench.json").read_text())["cases"]["setup"]
    assert rerun["reused"] == str(tmp_path / "work")  # a follow-up call skips building the model


def test_unet_flop_report_splits_the_real_sdxl_unet_by_kind_and_gives_the_floor(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "unet_flops.py"), f"--out={tmp_path}", "--peak-tflops=1000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = json.loads((tmp_path / "unet_flops.json").read_text())["sizes"]
    big = sizes["1024x1024"]
    flops = big["tflop_per_unet_row"]
    parts = flops["linear"] + flops["convolution"] + flops["attention"]
    assert flops["total"] == pytest.approx(parts, abs=0.01)
    assert flops["linear"] > flops["convolution"] > flops["attention"] > 0  # SDXL: the matmuls dominate
    assert big["floor_s_at_peak"] == pytest.approx(flops["total"] * 60 / 1000, abs=0.002)
    assert sizes["512x512"]["tflop_per_unet_row"]["total"] < flops["total"] / 3
    assert "| 1024x1024 | 30 |" in (tmp_path / "unet_flops.md").read_text()


def test_target_table_takes_each_targets_best_measured_figure_and_its_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from targets import Sizes, target_rows, targets_markdown

    report = {
        "cases": {
            "defaults": {
                "latency_1024_30_refinements_on_s": {"median": 1.7, "runs": [1.7]},
                "latency_512_20_s": {"median": 1.2, "runs": [1.2]},
                "peak_gib": 8.4,
                "refinement_cost_pct": 2.0,
            },
            "graphs": {
                "latency_1024_30_alone_s": {"median": 0.88, "runs": [0.88]},
                "latency_512_20_s": {"median": 0.31, "runs": [0.31]},
                "peak_gib": 12.0,  # a batch of 4: not the one-job memory target
            },
            "queue": {"steady_s_per_image": 1.29},
            "queue_graphs": {"steady_s_per_image": 0.8},
            "queue_expansion": {"steady_s_per_image": 0.83, "expansion_cost_pct": 3.8},
            "queue_expansion_ahead": {
                "steady_s_per_image": 0.9,
                "expansion_cost_pct": 1.0,
            },  # not the default
            "low_vram": {"peak_gib": 1.7},
            "broken": {"error": "RuntimeError: ..."},
        }
    }
    rows = {row.what: row for row in target_rows(report, Sizes(1024, 30, 512, 20))}
    assert (rows["one 1024² image, 30 steps"].value, rows["one 1024² image, 30 steps"].case) == (
        0.88,
        "graphs",
    )
    assert rows["one 1024² image, 30 steps"].met
    assert (rows["a queue of 1024² jobs, per image"].case, rows["a queue of 1024² jobs, per image"].met) == (
        "queue_graphs",
        False,
    )
    assert not rows["one 512² image, 20 steps"].met
    memory = rows["peak GPU memory, one 1024² job, everything resident"]
    assert (memory.value, memory.case, memory.met) == (8.4, "defaults", True)
    assert rows["peak GPU memory, low-VRAM mode"].value == 1.7
    assert "process start to ready, compiled artefacts on disk" not in rows  # no warm_start case ran
    expansion = rows['cost of "Fooocus V2" expansion in a queue']
    assert (expansion.value, expansion.case, expansion.met) == (3.8, "queue_expansion", True)
    table = "\n".join(targets_markdown(list(rows.values())))
    assert "| one 1024² image, 30 steps | 0.88 s | graphs | ≤ 0.9 s | yes |" in table
    assert targets_markdown([]) == []


def test_import_profile_sums_each_packages_own_import_time() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from import_profile import profile_imports
    finally:
        sys.path.remove(str(ROOT / "bench"))
    profile = profile_imports(["json", "email.message"], timeout=60)
    assert {"json", "email"} <= set(profile["packages_s"])
    assert profile["own_s_total"] > 0 and profile["wall_s"] >= profile["own_s_total"]
    assert "json.decoder" in profile["slowest_modules_s"] or len(profile["slowest_modules_s"]) == 12


def test_attention_bench_lays_out_fused_qkv_inputs_as_strided_views_of_one_projection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from attention_backends import HEAD_WIDTH, attention_inputs

    generator = torch.Generator().manual_seed(0)
    inner = 10 * HEAD_WIDTH
    q, k, v = attention_inputs(2, 10, 256, 256, "fused_qkv", torch.device("cpu"), torch.float32, generator)
    assert q.shape == k.shape == v.shape == (2, 10, 256, HEAD_WIDTH)
    assert q.stride() == (256 * 3 * inner, HEAD_WIDTH, 3 * inner, 1)  # one token's q, k, v side by side
    assert k.data_ptr() - q.data_ptr() == inner * q.element_size()
    q, k, v = attention_inputs(2, 10, 256, 77, "fused_qkv", torch.device("cpu"), torch.float32, generator)
    assert (q.stride(2), k.stride(2), k.shape[2]) == (inner, 2 * inner, 77)  # cross-attention: k, v fused
    contiguous = attention_inputs(2, 10, 256, 77, "contiguous", torch.device("cpu"), torch.float32, generator)
    assert all(t.is_contiguous() for t in contiguous) and contiguous[1].shape[2] == 77
