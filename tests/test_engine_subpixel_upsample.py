"""Nearest 2× upsampling + 3×3 convolution as one convolution of 2×2 phase kernels
(``subpixel_upsample.py``, ``engine.subpixel_upsample``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler
from diffusers.models.upsampling import Upsample2D
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.subpixel_upsample import (
    FORMS,
    install_subpixel_upsampling,
    takes_subpixel_path,
    tap_mixing,
    undo_subpixel_upsampling,
    upsample_conv,
    upsample_conv_transposed,
)
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.settings import EngineSettings
from tests.engine_helpers import (
    channels_last_randn,
    channels_last_unet_inputs,
    render_both_ways,
    tiny_unet_with_random_norms,
)


@torch.no_grad()
def _reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    doubled = F.interpolate(x.double(), scale_factor=2.0, mode="nearest")
    bias = None if conv.bias is None else conv.bias.double()
    return F.conv2d(doubled, conv.weight.double(), bias, padding=1)


def _routed(form: str, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    if form == "transposed":
        return upsample_conv_transposed(x, conv, tap_mixing(dtype=x.dtype, form=form))
    return upsample_conv(x, conv, tap_mixing(dtype=x.dtype))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_channels", "out_channels", "height", "width"), [(8, 8, 5, 7), (6, 10, 1, 4)])
def test_phase_kernels_give_the_upsampled_convolution_at_every_pixel_and_border(
    form: str, channels_last: bool, bias: bool, in_channels: int, out_channels: int, height: int, width: int
) -> None:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)
    x = channels_last_randn((2, in_channels, height, width), seed=height * width)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    else:
        x = x.contiguous()

    with torch.no_grad():
        result = _routed(form, x, conv)

    assert result.shape == (2, out_channels, 2 * height, 2 * width)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert result.is_contiguous(memory_format=layout)
    torch.testing.assert_close(result.double(), _reference(x, conv), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_phase_kernels_stay_within_its_rounding(form: str) -> None:
    conv = nn.Conv2d(32, 32, 3, padding=1).to(torch.bfloat16, memory_format=torch.channels_last)
    x = channels_last_randn((1, 32, 6, 6), seed=3, dtype=torch.bfloat16)
    with torch.no_grad():
        result = _routed(form, x, conv)
        stock = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    exact = _reference(x, conv)
    ours = float((result.double() - exact).norm() / exact.norm())
    theirs = float((stock.double() - exact).norm() / exact.norm())
    assert ours < 1e-2 and ours < 2 * theirs + 1e-3


def test_every_upsampler_of_the_sdxl_unet_and_vae_is_routed_and_can_go_back() -> None:
    pipeline = build_tiny_sdxl_pipeline(EulerDiscreteScheduler())
    for model in (pipeline.unet, pipeline.vae):
        upsamplers = [m for m in model.modules() if isinstance(m, Upsample2D)]
        assert upsamplers and all(takes_subpixel_path(m) for m in upsamplers)
        assert install_subpixel_upsampling(model) == len(upsamplers)
        assert install_subpixel_upsampling(model) == 0  # already routed
        assert all(name not in m.state_dict() for m in upsamplers for name in ("_subpixel_tap_mixing",))
        assert undo_subpixel_upsampling(model) == len(upsamplers)
        assert all("forward" not in vars(m) for m in upsamplers)


@pytest.mark.parametrize("form", FORMS)
def test_a_routed_unet_gives_the_same_noise_prediction(form: str) -> None:
    unet = tiny_unet_with_random_norms()
    x, text, added = channels_last_unet_inputs(unet, seed=5)
    with torch.no_grad():
        expected = unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
        assert install_subpixel_upsampling(unet, form=form) > 0
        routed = unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
    torch.testing.assert_close(routed, expected, atol=1e-4, rtol=1e-4)


def test_weights_changed_in_place_are_followed_as_a_folded_lora_changes_them() -> None:
    upsampler = Upsample2D(8, use_conv=True, out_channels=8).eval()
    install_subpixel_upsampling(upsampler)
    x = channels_last_randn((1, 8, 4, 4), seed=6).contiguous()
    with torch.no_grad():
        before = upsampler(x)
        upsampler.conv.weight.mul_(0.5)  # in place, as lora_merge folds a LoRA
        after = upsampler(x)
    torch.testing.assert_close(after.double(), _reference(x, upsampler.conv), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, after)


def test_other_sizes_active_loras_and_other_upsamplers_take_diffusers_path() -> None:
    upsampler = Upsample2D(8, use_conv=True, out_channels=8).eval()
    install_subpixel_upsampling(upsampler)
    x = channels_last_randn((1, 8, 4, 5), seed=7).contiguous()
    with torch.no_grad():
        odd = upsampler(x, output_size=(9, 11))  # not a doubling: diffusers' interpolation
        assert odd.shape[-2:] == (9, 11)
        inject_adapter_in_model(LoraConfig(r=2, target_modules=["conv"], init_lora_weights=False), upsampler)
        with_lora = upsampler(x)
        expected = upsampler.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(with_lora, expected)

    assert not takes_subpixel_path(Upsample2D(8, use_conv=False))
    assert not takes_subpixel_path(Upsample2D(8, use_conv_transpose=True))
    assert not takes_subpixel_path(Upsample2D(8, use_conv=True, kernel_size=1, padding=0))
    with pytest.raises(ValueError, match="form must be one of"):
        install_subpixel_upsampling(Upsample2D(8, use_conv=True), form="bilinear")


H100 = HardwareFacts("cuda", (9, 0), 80 * 2**30, True)


def test_subpixel_upsampling_is_on_by_default_on_a_gpu_off_on_the_cpu_and_in_low_vram_mode() -> None:
    cuda = torch.device("cuda")
    default = plan_acceleration(AccelerationOptions(vram="high"), cuda, torch.bfloat16, hardware=H100)
    assert default.subpixel_upsample and not default.notes
    assert EngineSettings().subpixel_upsample == "auto"
    cpu = plan_acceleration(AccelerationOptions(vram="high"), torch.device("cpu"), torch.float32)
    assert not cpu.subpixel_upsample
    asked = AccelerationOptions(vram="high", subpixel_upsample="on")
    assert plan_acceleration(asked, torch.device("cpu"), torch.float32).subpixel_upsample
    low = plan_acceleration(replace(asked, vram="low"), cuda, torch.bfloat16, hardware=H100)
    assert not low.subpixel_upsample and any("low-VRAM" in note for note in low.notes)
    off = plan_acceleration(replace(asked, subpixel_upsample="off"), cuda, torch.bfloat16, hardware=H100)
    assert not off.subpixel_upsample


def test_engine_with_subpixel_upsampling_renders_the_same_image(tmp_path: Path) -> None:
    difference, record, plain = render_both_ways(tmp_path, 11, "subpixel_upsample", "off", "on")

    assert record["subpixel_upsample"] is True and record["subpixel_upsamplers"] >= 3  # UNet and VAE
    assert plain["subpixel_upsamplers"] == 0
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_a_routed_upsampler_compiles_as_one_graph_for_a_whole_unet_compile() -> None:
    """``compile = "unet_full"`` traces the routed forward: a graph break would split the UNet."""
    upsampler = Upsample2D(8, use_conv=True, out_channels=8).eval().to(memory_format=torch.channels_last)
    install_subpixel_upsampling(upsampler)
    x = channels_last_randn((2, 8, 4, 5), seed=8)
    torch._dynamo.reset()
    compiled = torch.compile(upsampler, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), upsampler(x), atol=1e-5, rtol=1e-5)
