"""``engine.attention = "auto"``'s measurements kept in the cache folder between starts.

There is no GPU here: the kernels' timing (``measure_backends``) and the GPU's identity
(``attention_memory.environment``) are stood in for; the file, its keys and the choice are real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel

from fooocusd.engine import attention_choice, attention_memory
from fooocusd.engine.attention_choice import choose_attention, prefer_cudnn_attention
from fooocusd.engine.attention_memory import MEMORY_NAME, driver_version, environment
from fooocusd.engine.models import SDXL_CONFIG_DIR

CUDA = torch.device("cuda")
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "driver": "580.159.04", "torch": "2.11.0"}


@pytest.fixture(scope="module")
def sdxl_unet() -> UNet2DConditionModel:
    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


Measured = tuple[dict[str, float], dict[str, str]]


class Timings:
    """Counts the measurements ``choose_attention`` asks for (cuDNN first measures fastest) on a
    GPU described by ``facts``."""

    def __init__(self) -> None:
        self.calls = 0
        self.facts = dict(H100)

    def __call__(self, backends: list[str], *args: Any, **kwargs: Any) -> Measured:
        self.calls += 1
        return {"sdpa": 4.6, "sdpa_cudnn": 4.0}, {}


@pytest.fixture
def timings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Timings]:
    timer = Timings()
    monkeypatch.setattr(attention_choice, "measure_backends", timer)
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "")
    monkeypatch.setattr(attention_memory, "environment", lambda device: dict(timer.facts))
    attention_choice._measured.clear()
    yield timer
    attention_choice._measured.clear()
    prefer_cudnn_attention(False)


def new_process() -> None:
    """What a restart forgets: the measurements held in memory."""
    attention_choice._measured.clear()


def test_a_restart_takes_autos_choice_from_the_cache_folder_instead_of_timing_again(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path
) -> None:
    memory = tmp_path / MEMORY_NAME
    first = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, graphed=True, memory=memory)
    new_process()
    second = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, graphed=True, memory=memory)

    assert timings.calls == 1
    assert first.backend == second.backend == "sdpa_cudnn"
    assert second.per_unet_call_ms == first.per_unet_call_ms == {"sdpa": 4.6, "sdpa_cudnn": 4.0}
    assert "timed at an earlier start" in second.reason and "CUDA graph replays" in second.reason
    (entry,) = json.loads(memory.read_text(encoding="utf-8")).values()
    assert entry["facts"]["gpu"] == H100["gpu"] and entry["facts"]["graphed"] is True
    assert entry["facts"]["shapes"]["b2_h10_q4096_k4096_d64"] == 10


@pytest.mark.parametrize("change", ["driver", "torch", "gpu"])
def test_a_new_driver_library_or_card_is_timed_again(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path, change: str
) -> None:
    memory = tmp_path / MEMORY_NAME
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    new_process()
    timings.facts[change] += " (upgraded)"
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)

    assert timings.calls == 2
    assert len(json.loads(memory.read_text(encoding="utf-8"))) == 2  # both kept: one may come back


def test_eager_and_replayed_timings_and_dtypes_are_kept_apart(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path
) -> None:
    memory = tmp_path / MEMORY_NAME
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    new_process()
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, graphed=True, memory=memory)
    new_process()
    choose_attention("auto", sdxl_unet, CUDA, torch.float16, memory=memory)
    assert timings.calls == 3


def test_a_remembered_winner_failing_its_process_wide_check_now_is_passed_over(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = tmp_path / MEMORY_NAME
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    new_process()
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "masked attention fails")
    choice = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)

    assert timings.calls == 1
    assert choice.backend == "sdpa"
    assert choice.rejected["sdpa_cudnn"] == "masked attention fails"


def test_a_gpu_that_cannot_be_identified_is_timed_and_nothing_is_kept(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attention_memory, "environment", lambda device: None)
    memory = tmp_path / MEMORY_NAME
    assert choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory).backend == "sdpa_cudnn"
    assert not memory.exists()


def test_an_unwritable_cache_folder_costs_the_next_start_a_measurement_not_the_load(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path
) -> None:
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("", encoding="utf-8")
    choice = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=blocked / MEMORY_NAME)
    assert choice.backend == "sdpa_cudnn"


def test_a_damaged_memory_file_is_measured_over(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path
) -> None:
    memory = tmp_path / MEMORY_NAME
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    stored = json.loads(memory.read_text(encoding="utf-8"))
    for entry in stored.values():
        entry["per_unet_call_ms"] = {"sdpa": "fast"}
    memory.write_text(json.dumps(stored), encoding="utf-8")
    new_process()
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    memory.write_text("{not json", encoding="utf-8")
    new_process()
    assert choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory).backend == "sdpa_cudnn"
    assert timings.calls == 3


def test_a_gpu_that_does_not_answer_gives_no_environment_to_key_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gpu(device: object) -> str:
        raise RuntimeError("No CUDA GPUs are available")

    monkeypatch.setattr(torch.cuda, "get_device_name", no_gpu)
    assert environment(CUDA) is None


def test_a_gpus_environment_names_everything_its_timings_depend_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    facts = environment(CUDA)
    assert facts is not None
    assert facts["gpu"] == "NVIDIA H100 80GB HBM3" and facts["capability"] == "9.0"
    assert facts["torch"] == torch.__version__
    assert {"driver", "cuda", "cudnn", "fooocusd", "xformers", "flash-attn-4"} <= facts.keys()
    assert facts["xformers"] == "absent"  # not installed here


def test_the_driver_version_is_read_from_the_kernel_modules_banner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    banner = tmp_path / "version"
    banner.write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build"
        "  (dvs-builder@U22)\n"
        "GCC version:  gcc version 12.3.0\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(attention_memory, "DRIVER_VERSION_FILE", banner)
    assert driver_version() == "580.159.04"
    monkeypatch.setattr(attention_memory, "DRIVER_VERSION_FILE", tmp_path / "missing")
    monkeypatch.setattr(attention_memory, "_driver_api_version", lambda: "cuda-api-13000")
    assert driver_version() == "cuda-api-13000"  # without /proc's banner: the CUDA driver API's version


def test_timings_taken_by_an_older_measuring_method_are_not_reused(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = tmp_path / MEMORY_NAME
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    new_process()
    monkeypatch.setattr(attention_choice, "MEASURING_METHOD", attention_choice.MEASURING_METHOD + 1)
    choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory)
    assert timings.calls == 2


def test_a_candidate_that_failed_is_measured_again_at_the_next_start_not_ruled_out(
    sdxl_unet: UNet2DConditionModel, timings: Timings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = ({"sdpa": 4.6}, {"sdpa_cudnn": "OutOfMemoryError at b2_h10_q4096_k4096_d64: CUDA out of memory"})
    monkeypatch.setattr(attention_choice, "measure_backends", lambda *args, **kwargs: failed)
    memory = tmp_path / MEMORY_NAME
    assert choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory).backend == "sdpa"
    assert not memory.exists()
    new_process()
    monkeypatch.setattr(attention_choice, "measure_backends", timings)
    assert choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, memory=memory).backend == "sdpa_cudnn"
    assert timings.calls == 1 and memory.exists()
