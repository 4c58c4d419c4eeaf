"""Resnet blocks with GroupNorm, time shift and SiLU in one pass (``fused_resnet.py``,
``engine.fuse_resnet_norms``)."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler
from diffusers.models.resnet import ResnetBlock2D

from fooocusd.engine import acceleration, triton_group_norm, triton_residual
from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.fused_resnet import (
    compiled_group_norm_silu,
    fuse_resnet_norms,
    group_norm_silu,
    norms_on,
    takes_fused_path,
    triton_kernels_fail,
    unfuse_resnet_norms,
)
from fooocusd.engine.keep_channels_last import keep_channels_last
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.settings import EngineSettings
from tests.engine_helpers import (
    channels_last_randn,
    channels_last_unet_inputs,
    default_request,
    pixels_of,
    render_both_ways,
    tiny_engine_with,
    tiny_unet_with_random_norms,
)

H100 = HardwareFacts("cuda", (9, 0), 80 * 2**30, True)
CUDA = torch.device("cuda")


def _reference(
    x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, shift: torch.Tensor | None
):
    shifted = x.double() if shift is None else x.double() + shift.double()
    return F.silu(F.group_norm(shifted, groups, weight.double(), bias.double(), 1e-5))


@pytest.mark.parametrize("with_shift", [False, True])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_group_norm_silu_matches_pytorchs_norm_then_silu_and_keeps_the_layout(
    dtype: torch.dtype, tolerance: float, with_shift: bool
) -> None:
    x = channels_last_randn((2, 64, 6, 10), seed=1, dtype=dtype)
    generator = torch.Generator().manual_seed(2)
    weight, bias = (torch.randn(64, generator=generator).to(dtype) for _ in range(2))
    shift = torch.randn(2, 64, 1, 1, generator=generator).to(dtype) if with_shift else None

    fused = group_norm_silu(x, 32, weight, bias, 1e-5, shift)

    assert fused.dtype == dtype and fused.is_contiguous(memory_format=torch.channels_last)
    assert (fused.double() - _reference(x, 32, weight, bias, shift)).abs().max().item() <= tolerance


def test_a_fused_resnet_block_gives_diffusers_result_and_falls_back_for_other_inputs() -> None:
    unet = tiny_unet_with_random_norms()
    blocks = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    block = next(m for m in blocks if m.conv_shortcut is not None and m.time_emb_proj is not None)
    generator = torch.Generator().manual_seed(3)
    channels = block.norm1.num_channels
    x = torch.randn(2, channels, 8, 8, generator=generator) * 2 + 1
    temb = torch.randn(2, block.time_emb_proj.in_features, generator=generator)
    with torch.no_grad():
        expected = block(x.contiguous(memory_format=torch.channels_last), temb)
        planar_expected = block(x, temb)

        assert fuse_resnet_norms(block, kernel="eager") == 1
        fused = block(x.contiguous(memory_format=torch.channels_last), temb)
        planar = block(x, temb)

    assert fused.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fused, expected, atol=2e-5, rtol=2e-5)
    assert torch.equal(planar, planar_expected)  # NCHW input: diffusers' own forward
    assert unfuse_resnet_norms(block) == 1 and "forward" not in vars(block)


def test_every_resnet_of_the_sdxl_unet_and_vae_takes_the_fused_path() -> None:
    pipeline = build_tiny_sdxl_pipeline(EulerDiscreteScheduler())
    for model in (pipeline.unet, pipeline.vae):
        resnets = [m for m in model.modules() if isinstance(m, ResnetBlock2D)]
        assert resnets and all(takes_fused_path(m) for m in resnets)
        assert fuse_resnet_norms(model, kernel="eager") == len(resnets)
        assert fuse_resnet_norms(model, kernel="eager") == 0  # already fused


def test_a_fused_unet_gives_the_same_noise_prediction() -> None:
    unet = tiny_unet_with_random_norms()
    keep_channels_last(unet)
    x, text, added = channels_last_unet_inputs(unet, seed=4)
    with torch.no_grad():
        expected = unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        assert fuse_resnet_norms(unet, kernel="eager") > 5
        fused = unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample

    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("shapes", "graphs"), [("per_channel_count", 4), ("dynamic", 2)])
def test_compiled_group_norm_silu_matches_at_every_size_with_few_compiles(shapes: str, graphs: int) -> None:
    """As the engine compiles (automatic dynamic shapes off): per channel count, one graph with a
    shift and one without, whatever the batch and image size; all dynamic, one of each in all."""
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        _check_compiled_at_every_size(shapes, graphs)


def _check_compiled_at_every_size(shapes: str, graphs: int) -> None:
    torch._dynamo.reset()
    compiled_group_norm_silu.cache_clear()
    compiled = compiled_group_norm_silu(shapes)
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    generator = torch.Generator().manual_seed(5)
    for channels in (32, 48):
        weight, bias = (torch.randn(channels, generator=generator) for _ in range(2))
        for n, height, width in ((2, 6, 10), (2, 12, 8), (4, 7, 7), (2, 16, 16)):
            x = channels_last_randn((n, channels, height, width), seed=height * width)
            shift = torch.randn(n, channels, 1, 1, generator=generator)
            for each in (None, shift):
                with torch.no_grad():
                    result = compiled(x, 8, weight, bias, 1e-5, each)
                assert result.is_contiguous(memory_format=torch.channels_last)
                expected = _reference(x, 8, weight, bias, each)
                torch.testing.assert_close(result.double(), expected, atol=1e-4, rtol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == graphs


def test_engine_with_fused_resnets_renders_the_same_image(tmp_path: Path) -> None:
    difference, record, plain = render_both_ways(tmp_path, 9, "fuse_resnet_norms", "off", "on")

    assert record["fuse_resnet_norms"] is True and record["fused_resnets"] > 10  # UNet and VAE
    assert "fuse_resnet_norms runs eagerly: no Triton here and compile is off" in record["notes"]
    assert plain["fused_resnets"] == 0
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_engine_on_our_triton_kernels_renders_the_same_image(
    tmp_path: Path, triton_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path a GPU takes by default (the load-time check, the transformers' GroupNorms and
    the resnets' norms and residual adds on our kernels, convolutions without biases), here with
    Triton's interpreter standing in for the GPU where there is none."""
    plain = tiny_engine_with(tmp_path, layout_on_cpu=True, fuse_resnet_norms="off")
    monkeypatch.setattr(acceleration, "triton_runs", lambda device, hardware=None: True)
    launched: Counter[str] = Counter()
    for module, name in (
        (triton_group_norm, "group_norm_silu"),
        (triton_group_norm, "group_norm"),
        (triton_residual, "add_bias_residual"),
    ):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, functools.partial(_counted, launched, name, original))
    fused = tiny_engine_with(tmp_path, layout_on_cpu=True)
    request = replace(default_request(seed=9), steps=1, width=512, height=512)  # the interpreter is slow

    difference = np.abs(pixels_of(fused, request) - pixels_of(plain, request))

    record = fused.describe()["acceleration"]
    assert record["fused_norm_kernel"] == "triton" and record["fused_resnets"] > 10 and not record["notes"]
    assert set(launched) == {"group_norm_silu", "group_norm", "add_bias_residual"}
    assert difference.max() <= 2 and difference.mean() < 0.05


def _counted(launched: Counter[str], name: str, original: Any, *args: Any) -> torch.Tensor:
    launched[name] += 1
    return original(*args)


def test_fused_resnets_run_our_triton_kernels_by_default_on_a_gpu_and_are_off_on_the_cpu() -> None:
    default = plan_acceleration(AccelerationOptions(vram="high"), CUDA, torch.bfloat16, hardware=H100)
    assert default.fuse_resnet_norms and default.fused_norm_kernel == "triton" and not default.notes
    assert EngineSettings().fuse_resnet_norms == "auto"
    on_cpu = AccelerationOptions(vram="high", layout_on_cpu=True)
    cpu = plan_acceleration(on_cpu, torch.device("cpu"), torch.float32)
    assert cpu.keep_channels_last and not cpu.fuse_resnet_norms and cpu.fused_norm_kernel == ""


def test_fused_resnets_without_triton_compile_where_the_unet_does_and_stay_eager_in_a_whole_compile() -> None:
    asked = AccelerationOptions(vram="high", fuse_resnet_norms="on")
    no_triton = replace(H100, triton_available=False)
    plan = plan_acceleration(replace(asked, compile="unet"), CUDA, torch.bfloat16, hardware=no_triton)
    assert plan.fused_norm_kernel == "compiled" and not plan.notes
    default = plan_acceleration(AccelerationOptions(vram="high"), CUDA, torch.bfloat16, hardware=no_triton)
    assert default.fused_norm_kernel == ""

    whole = plan_acceleration(replace(asked, compile="unet_full"), CUDA, torch.bfloat16, hardware=H100)
    assert whole.fused_norm_kernel == "eager"  # the whole-UNet compile traces and fuses the maths itself

    off = plan_acceleration(replace(asked, fuse_resnet_norms="off"), CUDA, torch.bfloat16, hardware=H100)
    assert not off.fuse_resnet_norms and off.fused_norm_kernel == ""

    planar = replace(asked, channels_last=False)
    plan = plan_acceleration(planar, CUDA, torch.bfloat16, hardware=H100)
    assert not plan.fuse_resnet_norms
    assert "fuse_resnet_norms off: activations are not kept channels_last" in plan.notes


def test_fused_resnets_are_off_in_low_vram_mode_whose_hooks_stream_the_norms_weights_in() -> None:
    low = plan_acceleration(AccelerationOptions(vram="low"), CUDA, torch.bfloat16, hardware=H100)
    assert low.keep_channels_last and not low.fuse_resnet_norms and low.fused_norm_kernel == ""
    assert not any("fuse_resnet_norms" in note for note in low.notes)  # auto: off without a word
    asked = plan_acceleration(
        AccelerationOptions(vram="low", fuse_resnet_norms="on"), CUDA, torch.bfloat16, hardware=H100
    )
    assert not asked.fuse_resnet_norms and any("low-VRAM" in note for note in asked.notes)


def test_a_fused_block_whose_norm_weights_are_elsewhere_runs_diffusers_forward() -> None:
    """As under an offloading hook that brings the weights in only when the norm module is called."""
    unet = tiny_unet_with_random_norms()
    block = next(m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None)
    generator = torch.Generator().manual_seed(10)
    x = (torch.randn(2, block.norm1.num_channels, 8, 8, generator=generator)).contiguous(
        memory_format=torch.channels_last
    )
    temb = torch.randn(2, block.time_emb_proj.in_features, generator=generator)
    fuse_resnet_norms(block, kernel="eager")
    called = []
    block.norm1.register_forward_hook(lambda *_: called.append("norm1"))  # only diffusers' forward calls it
    with torch.no_grad():
        block(x, temb)
    assert norms_on(block, x.device) and called == []  # fused: the norms' modules are not called

    block.norm2.to("meta")
    assert not norms_on(block, x.device)
    with torch.no_grad(), pytest.raises((NotImplementedError, RuntimeError)):
        block(x, temb)  # diffusers' forward, which calls norm1, then norm2 on its meta weights
    assert called == ["norm1"]


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((2, 64, 6, 10), 32), ((1, 96, 17, 16), 8), ((3, 40, 3, 5), 4), ((1, 128, 24, 24), 32)],
)
@pytest.mark.parametrize("with_shift", [False, True])
def test_triton_kernels_match_pytorchs_norm_then_silu_at_sizes_off_the_tiles(
    triton_device: torch.device, shape: tuple[int, int, int, int], groups: int, with_shift: bool
) -> None:
    """Channel counts that are not a multiple of the 64-channel tile, groups of 12 or 10 channels,
    pixel counts off the 64-pixel tile, and sums split over several slices of the pixels."""
    x = channels_last_randn(shape, seed=sum(shape))
    generator = torch.Generator().manual_seed(6)
    channels = shape[1]
    weight, bias = (torch.randn(channels, generator=generator) for _ in range(2))
    shift = torch.randn(shape[0], channels, 1, 1, generator=generator) if with_shift else None
    on = [t.to(triton_device) if t is not None else None for t in (x, weight, bias, shift)]

    result = triton_group_norm.group_norm_silu(on[0], groups, on[1], on[2], 1e-5, on[3]).cpu()

    assert result.is_contiguous(memory_format=torch.channels_last)
    expected = _reference(x, groups, weight, bias, shift)
    torch.testing.assert_close(result.double(), expected, atol=2e-5, rtol=2e-5)  # every element written


def test_triton_kernels_write_bfloat16_within_its_rounding(triton_device: torch.device) -> None:
    x = channels_last_randn((2, 64, 9, 7), seed=7, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(8)
    weight, bias = (torch.randn(64, generator=generator).bfloat16() for _ in range(2))
    shift = torch.randn(2, 64, 1, 1, generator=generator).bfloat16()
    on = [t.to(triton_device) for t in (x, weight, bias, shift)]

    result = triton_group_norm.group_norm_silu(on[0], 32, on[1], on[2], 1e-5, on[3]).cpu()

    expected = _reference(x, 32, weight, bias, shift)
    assert result.dtype == torch.bfloat16
    # the interpreter rounds float32 → bfloat16 towards zero (a GPU rounds to nearest): ≤ 2 ulps
    assert float((result.double() - expected).norm() / expected.norm()) < 1e-2
    assert triton_kernels_fail(triton_device, torch.bfloat16) == ""


def test_triton_kernels_refuse_inputs_they_cannot_read(triton_device: torch.device) -> None:
    x = torch.randn(1, 64, 4, 4, device=triton_device)
    weight = bias = torch.ones(64, device=triton_device)
    with pytest.raises(ValueError, match="channels_last"):
        triton_group_norm.group_norm_silu(x, 32, weight, bias, 1e-5)
    with pytest.raises(ValueError, match="groups"):
        x = x.contiguous(memory_format=torch.channels_last)
        triton_group_norm.group_norm_silu(x, 24, weight, bias, 1e-5)


def test_a_resnet_block_fused_with_triton_kernels_gives_diffusers_result(triton_device: torch.device) -> None:
    unet = tiny_unet_with_random_norms().to(triton_device)
    block = next(m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None)
    generator = torch.Generator().manual_seed(9)
    x = (torch.randn(2, block.norm1.num_channels, 8, 8, generator=generator) * 2 + 1).contiguous(
        memory_format=torch.channels_last
    )
    temb = torch.randn(2, block.time_emb_proj.in_features, generator=generator)
    x, temb = x.to(triton_device), temb.to(triton_device)
    calls = []
    original = triton_group_norm.group_norm_silu

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    with torch.no_grad():
        expected = block(x, temb)
        assert fuse_resnet_norms(block, kernel="triton") == 1
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(triton_group_norm, "group_norm_silu", counted)
            fused = block(x, temb)

    assert len(calls) == 2  # norm1, and norm2 with the time shift
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)


def test_triton_kernels_that_disagree_or_raise_are_named_by_the_load_time_check(
    triton_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_group_norm, "group_norm_silu", lambda x, *a: torch.zeros_like(x))
    assert "relative error" in triton_kernels_fail(triton_device, torch.float32)

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("ptxas fatal: unsupported GPU")

    monkeypatch.setattr(triton_group_norm, "group_norm_silu", broken)
    failure = triton_kernels_fail(triton_device, torch.float32)
    assert failure == "RuntimeError: ptxas fatal: unsupported GPU"
