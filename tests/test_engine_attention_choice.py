"""``engine.attention`` (``attention_choice.py``): the UNet's attention shapes, timing, picking.

The shapes come from the real SDXL UNet architecture (built on the meta device: no memory, no
weights), the timings from real attention calls on the CPU. Only the CUDA-only decision in
``choose_attention`` runs with the measurement replaced, since this machine has no GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from fooocusd.engine import attention_choice
from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.attention_choice import (
    AttentionShape,
    choose_attention,
    describe_setting,
    enable_attention,
    masked_attention_problem,
    measure_backends,
    pick_fastest,
    prefer_cudnn_attention,
    unet_attention_shapes,
)
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.errors import ConfigError
from tests.engine_helpers import tiny_engine_with

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
TINY_SHAPES = Counter({AttentionShape(2, 2, 64, 64, 16): 2, AttentionShape(2, 2, 64, 77, 16): 2})


@pytest.fixture(scope="module")
def sdxl_unet() -> UNet2DConditionModel:
    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR / "unet")
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.fixture(autouse=True)
def fresh_measurements() -> Iterator[None]:
    attention_choice._measured.clear()
    yield
    prefer_cudnn_attention(False)


def test_sdxl_attention_shapes_are_counted_per_level_at_1024(sdxl_unet: UNet2DConditionModel) -> None:
    shapes = unet_attention_shapes(sdxl_unet)
    assert shapes == {
        # 64×64 latents' level: 2 down + 3 up blocks of one 2-layer transformer each, 10 heads of 64
        AttentionShape(2, 10, 4096, 4096, 64): 10,
        AttentionShape(2, 10, 4096, 77, 64): 10,
        # 32×32: 2 down + 1 mid + 3 up blocks of 10-layer transformers, 20 heads of 64
        AttentionShape(2, 20, 1024, 1024, 64): 60,
        AttentionShape(2, 20, 1024, 77, 64): 60,
    }


def test_a_batch_of_four_images_is_counted_with_its_cfg_rows(sdxl_unet: UNet2DConditionModel) -> None:
    shapes = unet_attention_shapes(sdxl_unet, batch=8)
    assert {shape.batch for shape in shapes} == {8}
    assert sum(shapes.values()) == 140


def test_every_backend_that_runs_here_is_timed_per_unet_call() -> None:
    per_call, rejected = measure_backends(["sdpa", "sdpa_cudnn"], TINY_SHAPES, CPU, torch.float32, runs=3)
    # On a CPU cuDNN's kernels refuse the shape and PyTorch falls through to its next choice.
    assert rejected == {}
    assert set(per_call) == {"sdpa", "sdpa_cudnn"} and all(ms > 0 for ms in per_call.values())


def test_a_backend_with_a_different_result_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    real_runner = attention_choice.attention_runner

    def runner(backend: str) -> Callable[..., torch.Tensor]:
        if backend == "sdpa_cudnn":
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v) + 0.5
        return real_runner(backend)

    monkeypatch.setattr(attention_choice, "attention_runner", runner)
    per_call, rejected = measure_backends(["sdpa", "sdpa_cudnn"], TINY_SHAPES, CPU, torch.float32, runs=2)
    assert list(per_call) == ["sdpa"]
    assert "differs from PyTorch's default by up to 0.5" in rejected["sdpa_cudnn"]


def test_a_backend_that_fails_on_a_shape_is_rejected_with_the_error() -> None:
    per_call, rejected = measure_backends(["sdpa", "xformers"], TINY_SHAPES, CPU, torch.float32, runs=2)
    assert list(per_call) == ["sdpa"]
    assert "xformers" in rejected


def test_only_a_clear_saving_moves_away_from_pytorchs_choice() -> None:
    assert pick_fastest({"sdpa": 10.0, "sdpa_cudnn": 9.9})[0] == "sdpa"
    backend, reason = pick_fastest({"sdpa": 10.0, "sdpa_cudnn": 8.0, "xformers": 9.0})
    assert backend == "sdpa_cudnn" and "20% faster" in reason
    assert pick_fastest({"sdpa_cudnn": 1.0})[0] == "sdpa"  # nothing to compare against: the default


def test_auto_on_a_cpu_keeps_pytorchs_choice_without_measuring(sdxl_unet: UNet2DConditionModel) -> None:
    choice = choose_attention("auto", sdxl_unet, torch.device("cpu"), torch.float32)
    assert choice.backend == "sdpa" and choice.per_unet_call_ms == {}


def test_a_configured_backend_is_used_as_it_is(sdxl_unet: UNet2DConditionModel) -> None:
    assert choose_attention("xformers", sdxl_unet, CUDA, torch.bfloat16).backend == "xformers"


def test_auto_on_a_gpu_measures_once_per_model_shape_and_picks_the_fastest(
    sdxl_unet: UNet2DConditionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured: list[list[str]] = []

    def measure(
        backends: list[str],
        shapes: Counter[AttentionShape],
        device: torch.device,
        dtype: torch.dtype,
        graphed: bool = False,
    ) -> tuple[dict[str, float], dict[str, str]]:
        measured.append(list(backends))
        assert not graphed
        assert shapes == unet_attention_shapes(sdxl_unet) and device == CUDA
        return {"sdpa": 40.0, "sdpa_cudnn": 30.0}, {}

    monkeypatch.setattr(attention_choice, "measure_backends", measure)
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "")
    first = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16)
    again = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16)
    assert first.backend == again.backend == "sdpa_cudnn"
    assert measured == [["sdpa", "sdpa_cudnn"]]  # xformers is not installed here, so not a candidate
    record = first.record()
    assert record["attention_ms_per_unet_call"] == {"sdpa": 40.0, "sdpa_cudnn": 30.0}
    assert record["attention_measuring_s"] >= 0
    assert "not installed" in record["attention_rejected"]["xformers"]


def test_preferring_cudnn_puts_it_first_and_restoring_gives_pytorchs_order() -> None:
    default = list(torch._C._get_sdp_priority_order())
    prefer_cudnn_attention(True)
    preferred = list(torch._C._get_sdp_priority_order())
    prefer_cudnn_attention(False)
    assert preferred[0] == int(torch.nn.attention.SDPBackend.CUDNN_ATTENTION)
    assert sorted(preferred) == sorted(default)
    assert list(torch._C._get_sdp_priority_order()) == default


def test_backends_that_cannot_run_here_are_configuration_errors(tmp_path: Path) -> None:
    engine = tiny_engine_with(tmp_path)
    pipeline = engine._pipeline
    with pytest.raises(ConfigError, match="NVIDIA GPUs only") as cudnn:
        enable_attention(pipeline, "sdpa_cudnn", torch.device("cpu"))
    assert "auto" in (cudnn.value.hint or "")
    with pytest.raises(ConfigError, match="xformers cannot be used"):
        enable_attention(pipeline, "xformers", torch.device("cpu"))


def test_the_engine_reports_the_backend_in_use_and_why(tmp_path: Path) -> None:
    facts = tiny_engine_with(tmp_path).describe()
    assert facts["attention"] == "sdpa"
    assert "measured on CUDA GPUs only" in facts["acceleration"]["attention_reason"]


def test_before_a_model_loads_auto_is_described_by_what_it_would_time() -> None:
    expected = "attention auto (the fastest of sdpa, sdpa_cudnn, timed once per card, driver and libraries)"
    assert describe_setting("auto", CUDA) == expected
    assert describe_setting("xformers", CUDA) == "attention xformers"


@pytest.mark.parametrize(
    ("family", "first_level_tokens", "head_dims"),
    [("sdxl_refiner", 64 * 64, {64}), ("sd15", 64 * 64, {40, 80, 160}), ("sd21", 96 * 96, {64})],
)
def test_other_unets_attention_shapes_follow_their_native_size(
    family: str, first_level_tokens: int, head_dims: set[int]
) -> None:
    config = UNet2DConditionModel.load_config(SDXL_CONFIG_DIR.parent / family / "unet")
    with torch.device("meta"):
        shapes = unet_attention_shapes(UNet2DConditionModel.from_config(config))
    assert max(shape.queries for shape in shapes) == first_level_tokens
    assert {shape.head_dim for shape in shapes} == head_dims
    assert {shape.keys for shape in shapes if shape.keys != shape.queries} == {77}


def test_a_unet_of_another_layout_keeps_pytorchs_choice_instead_of_failing_the_load() -> None:
    class Unusual(torch.nn.Module):
        config = type("Config", (), {"sample_size": 64})()

    choice = choose_attention("auto", Unusual(), CUDA, torch.bfloat16)
    assert choice.backend == "sdpa" and "shapes unknown" in choice.reason


def test_masked_attention_gives_pytorchs_result_with_cudnn_first_here() -> None:
    assert masked_attention_problem(CPU, torch.float32) == ""


def test_cudnn_first_is_not_chosen_when_it_breaks_the_expansions_masked_attention(
    sdxl_unet: UNet2DConditionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        attention_choice, "measure_backends", lambda *args, **kwargs: ({"sdpa": 40.0, "sdpa_cudnn": 20.0}, {})
    )
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "masked attention fails")
    choice = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16)
    assert choice.backend == "sdpa"
    assert choice.rejected["sdpa_cudnn"] == "masked attention fails"
    assert "sdpa_cudnn" not in choice.per_unet_call_ms


def test_auto_times_as_cuda_graphs_replay_when_the_engine_replays_graphs(
    sdxl_unet: UNet2DConditionModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed_graphed: list[bool] = []

    def measure(*args: object, graphed: bool = False) -> tuple[dict[str, float], dict[str, str]]:
        timed_graphed.append(graphed)
        # eagerly, cuDNN first pays its host work per call; replayed, only its kernels count
        return ({"sdpa": 7.0, "sdpa_cudnn": 5.0} if graphed else {"sdpa": 9.3, "sdpa_cudnn": 21.8}), {}

    monkeypatch.setattr(attention_choice, "measure_backends", measure)
    monkeypatch.setattr(attention_choice, "masked_attention_problem", lambda *args: "")
    monkeypatch.setattr(attention_choice, "_measured", {})
    eager = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16)
    replayed = choose_attention("auto", sdxl_unet, CUDA, torch.bfloat16, graphed=True)

    assert timed_graphed == [False, True]  # measured for each way of running, once
    assert eager.backend == "sdpa"
    assert replayed.backend == "sdpa_cudnn" and "timed as CUDA graph replays" in replayed.reason


def test_fused_projections_stay_with_cudnn_first_which_is_still_pytorchs_sdpa() -> None:
    h100 = HardwareFacts("cuda", (9, 0), 80 * 2**30, True)
    options = AccelerationOptions(vram="high")
    cudnn = plan_acceleration(options, CUDA, torch.bfloat16, attention="sdpa_cudnn", hardware=h100)
    xformers = plan_acceleration(options, CUDA, torch.bfloat16, attention="xformers", hardware=h100)

    assert cudnn.fuse_qkv and not any("fuse_qkv" in note for note in cudnn.notes)
    assert not xformers.fuse_qkv and any("fuse_qkv off" in note for note in xformers.notes)
