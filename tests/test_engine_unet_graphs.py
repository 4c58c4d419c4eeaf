"""CUDA graphs for the base UNet (``unet_graphs.py``), checked on the CPU.

A real CUDA graph needs an NVIDIA GPU (the GPU benchmark's ``graphs`` cases run it). Here a double
of the capture layer stands in for ``torch.cuda.CUDAGraph`` with the same contract: ``replay``
re-reads the static input buffers and writes the same static output tensor. Everything around it is
real: the tiny-random SDXL UNet, the engine, the bucket bookkeeping, the checks, the fallbacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from torch import nn

from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.denoise import call_unet
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.graph_capture import active_adapter_layers
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.engine.unet_graphs import UNetGraphs
from tests.engine_helpers import ReplayByRerun, default_request, tiny_engine_with

CUDA = torch.device("cuda")  # a label for the planner only
H100 = HardwareFacts("cuda", (9, 0), 80 * 2**30, True)


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    return build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()


def _inputs(unet: nn.Module, batch: int = 2, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    tokens_width = unet.config.cross_attention_dim
    pooled_width = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return (
        torch.randn(batch, 4, size, size, generator=generator),
        torch.tensor(500.0 + seed),
        torch.randn(batch, 77, tokens_width, generator=generator),
        torch.randn(batch, pooled_width, generator=generator),
        torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch, dtype=torch.float32),
    )


@torch.inference_mode()
def test_replayed_graph_gives_the_eager_output_for_new_inputs_of_the_same_shape(unet: nn.Module) -> None:
    graphs = UNetGraphs(unet, ReplayByRerun())
    predict = graphs.predictor(unet)
    assert predict is not None
    first, second = _inputs(unet, seed=1), _inputs(unet, seed=2)

    torch.testing.assert_close(predict(*first), call_unet(unet, *first))
    kept = predict(*first)
    torch.testing.assert_close(predict(*second), call_unet(unet, *second))

    torch.testing.assert_close(kept, call_unet(unet, *first))  # a result outlives the next replay
    assert graphs.record()["cuda_graphs"] == 1 and graphs.captures == 1 and graphs.replays == 3


@torch.inference_mode()
def test_each_input_shape_gets_its_own_graph_and_the_least_recent_goes_past_the_limit(
    unet: nn.Module,
) -> None:
    graphs = UNetGraphs(unet, ReplayByRerun(), max_graphs=2)
    predict = graphs.predictor(unet)
    assert predict is not None
    for batch, size in ((2, 8), (4, 8), (2, 8), (2, 16)):
        inputs = _inputs(unet, batch=batch, size=size)
        torch.testing.assert_close(predict(*inputs), call_unet(unet, *inputs))

    assert graphs.captures == 3  # (2, 8) was replayed, not captured again
    assert graphs.record()["cuda_graphs"] == 2


@pytest.mark.parametrize(
    ("backend", "reason"),
    [
        (ReplayByRerun(corrupt=True), "replay differs from eager"),
        (ReplayByRerun(fail="operation not permitted when stream is capturing"), "capture failed"),
    ],
)
@torch.inference_mode()
def test_a_shape_whose_graph_fails_or_replays_wrong_runs_eagerly_and_says_why(
    unet: nn.Module, backend: ReplayByRerun, reason: str
) -> None:
    graphs = UNetGraphs(unet, backend)
    predict = graphs.predictor(unet)
    assert predict is not None
    inputs = _inputs(unet)

    torch.testing.assert_close(predict(*inputs), call_unet(unet, *inputs))
    torch.testing.assert_close(predict(*inputs), call_unet(unet, *inputs))

    (note,) = graphs.record()["cuda_graph_eager_buckets"]
    assert note.startswith("2x4x8x8 float32: ") and reason in note
    assert graphs.captures == 0 and graphs.replays == 0


@torch.inference_mode()
def test_replaced_weights_drop_the_graphs_that_read_the_old_ones() -> None:
    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    graphs = UNetGraphs(unet, ReplayByRerun())
    inputs = _inputs(unet)
    graphs.predictor(unet)(*inputs)  # type: ignore[misc]

    with torch.no_grad():
        unet.conv_in.weight.mul_(2.0)  # in place (a folded LoRA): the graph reads the new values
    assert graphs.predictor(unet) is not None and graphs.record()["cuda_graphs"] == 1
    unet.conv_in.weight = nn.Parameter(unet.conv_in.weight.detach() * 0.5)  # a new tensor: recapture
    predict = graphs.predictor(unet)
    assert predict is not None and graphs.record()["cuda_graphs"] == 0

    torch.testing.assert_close(predict(*inputs), call_unet(unet, *inputs))
    assert graphs.captures == 2


@torch.inference_mode(False)
def test_another_unet_or_active_lora_layers_run_without_graphs() -> None:
    from peft import LoraConfig

    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    graphs = UNetGraphs(unet, ReplayByRerun())
    other = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet
    assert graphs.predictor(other) is None

    unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k"]), adapter_name="ink")
    assert active_adapter_layers(unet) > 0
    assert graphs.predictor(unet) is None  # a LoRA scale is a Python number a capture would freeze
    unet.disable_adapters()  # what folding does once the LoRA is in the weights
    assert active_adapter_layers(unet) == 0 and graphs.predictor(unet) is not None


def test_cuda_graphs_are_planned_only_on_an_nvidia_gpu_in_high_vram_mode_without_compiled_graphs() -> None:
    on = AccelerationOptions(vram="high", cuda_graphs="on")

    assert plan_acceleration(on, CUDA, torch.bfloat16, hardware=H100).cuda_graphs
    assert not plan_acceleration(
        AccelerationOptions(vram="high", cuda_graphs="off"), CUDA, torch.bfloat16, hardware=H100
    ).cuda_graphs
    for options, note in (
        (AccelerationOptions(vram="low", cuda_graphs="on"), "low-VRAM"),
        (
            AccelerationOptions(
                vram="high", cuda_graphs="on", compile="unet_full", compile_mode="reduce-overhead"
            ),
            "own CUDA graphs",
        ),
    ):
        plan = plan_acceleration(options, CUDA, torch.bfloat16, hardware=H100)
        assert not plan.cuda_graphs and any(note in each for each in plan.notes), plan.notes
    cpu = plan_acceleration(
        on, torch.device("cpu"), torch.float32, hardware=HardwareFacts("cpu", None, None, True)
    )
    assert not cpu.cuda_graphs and any("need an NVIDIA GPU" in note for note in cpu.notes)


def test_the_engine_renders_the_same_image_through_graphs_and_drops_them_on_unload(tmp_path: Path) -> None:
    plain = tiny_engine_with(tmp_path)
    graphed = tiny_engine_with(tmp_path)
    graphed._accelerator.graphs = UNetGraphs(graphed._pipeline.unet, ReplayByRerun())  # type: ignore[union-attr]
    request = default_request(seed=5)

    expected = np.asarray(plain.generate(request).image)
    np.testing.assert_array_equal(np.asarray(graphed.generate(request).image), expected)

    record = graphed.describe()["acceleration"]
    assert record["cuda_graph_captures"] == 1 and record["cuda_graph_replays"] == request.steps
    graphed.unload()
    assert graphed._accelerator.graphs is None


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_regional_compile_drops_a_compile_mode_whose_cuda_graphs_break_it(mode: str) -> None:
    regional = AccelerationOptions(vram="high", compile="unet", compile_mode=mode, cuda_graphs="on")
    whole = AccelerationOptions(vram="high", compile="unet_full", compile_mode=mode)

    plan = plan_acceleration(regional, CUDA, torch.bfloat16, hardware=H100)
    assert (plan.compile, plan.compile_mode, plan.cuda_graphs) == ("unet", "default", True)
    assert any(note.startswith(f"compile_mode {mode} → default") for note in plan.notes), plan.notes
    assert plan_acceleration(whole, CUDA, torch.bfloat16, hardware=H100).compile_mode == mode


def test_cuda_graphs_are_on_by_default_from_16_gib_and_on_smaller_gpus_only_when_asked() -> None:
    twelve_gib = HardwareFacts("cuda", (8, 9), 12 * 2**30, True)
    default = AccelerationOptions(vram="high")

    assert plan_acceleration(default, CUDA, torch.bfloat16, hardware=H100).cuda_graphs
    small = plan_acceleration(default, CUDA, torch.bfloat16, hardware=twelve_gib)
    assert not small.cuda_graphs and not any("cuda_graphs" in note for note in small.notes)
    on = AccelerationOptions(vram="high", cuda_graphs="on")
    assert plan_acceleration(on, CUDA, torch.bfloat16, hardware=twelve_gib).cuda_graphs


def test_auto_cuda_graphs_are_on_wherever_on_would_be_used_and_silently_off_elsewhere() -> None:
    auto = AccelerationOptions(vram="high", cuda_graphs="auto")
    planned = plan_acceleration(auto, CUDA, torch.bfloat16, hardware=H100)
    assert planned.cuda_graphs and not any("cuda_graphs" in note for note in planned.notes)
    elsewhere = [
        (AccelerationOptions(vram="low", cuda_graphs="auto"), CUDA, H100),
        (
            AccelerationOptions(
                vram="high", cuda_graphs="auto", compile="unet_full", compile_mode="reduce-overhead"
            ),
            CUDA,
            H100,
        ),
        (auto, torch.device("cpu"), HardwareFacts("cpu", None, None, True)),
    ]
    for options, device, hardware in elsewhere:
        plan = plan_acceleration(options, device, torch.bfloat16, hardware=hardware)
        assert not plan.cuda_graphs and not any("cuda_graphs" in note for note in plan.notes), plan.notes
