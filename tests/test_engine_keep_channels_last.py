"""Activations kept channels_last (``keep_channels_last.py``, ``engine.keep_channels_last``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fooocusd.engine import triton_group_norm
from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.devices import HardwareFacts
from fooocusd.engine.keep_channels_last import (
    KeptLayout,
    compiled_group_norm_channels_last,
    group_norm_channels_last,
    keep_channels_last,
    undo_keep_channels_last,
)
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.settings import EngineSettings
from tests.engine_helpers import (
    channels_last_randn,
    channels_last_unet_inputs,
    default_request,
    pixels_of,
    tiny_engine_with,
)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_channels_last_group_norm_matches_pytorchs_and_keeps_the_layout(
    dtype: torch.dtype, tolerance: float, affine: bool
) -> None:
    x = channels_last_randn((2, 64, 6, 10), seed=1, dtype=dtype)
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(64, generator=generator).to(dtype) if affine else None
    bias = torch.randn(64, generator=generator).to(dtype) if affine else None
    double = (None if each is None else each.double() for each in (weight, bias))
    exact = F.group_norm(x.double(), 32, *double)

    ours = group_norm_channels_last(x, 32, weight, bias, 1e-5)
    pytorch = F.group_norm(x, 32, weight, bias, 1e-5)

    assert ours.dtype == dtype and ours.is_contiguous(memory_format=torch.channels_last)
    ours_error = (ours.double() - exact).abs().max().item()
    assert ours_error <= tolerance
    assert ours_error <= 1.01 * (pytorch.double() - exact).abs().max().item() + 1e-6  # no worse


def test_modules_use_it_for_channels_last_inputs_only_and_can_go_back() -> None:
    norm = nn.GroupNorm(8, 32).eval()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    wrapped = nn.Sequential(norm, nn.SiLU())
    nchw = torch.randn(2, 32, 5, 7)
    channels_last = nchw.contiguous(memory_format=torch.channels_last)
    expected = F.group_norm(nchw, 8, norm.weight, norm.bias, norm.eps)

    assert keep_channels_last(wrapped) == KeptLayout(group_norms=1)
    assert keep_channels_last(wrapped) == KeptLayout()  # already routed
    with torch.no_grad():
        assert torch.equal(norm(nchw), expected)  # not channels_last: PyTorch's own, bit for bit
        routed = norm(channels_last)
    assert routed.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(routed, expected, atol=1e-5, rtol=1e-5)

    assert undo_keep_channels_last(wrapped) == KeptLayout(group_norms=1)
    assert "forward" not in vars(norm)


def test_compiled_group_norm_matches_pytorch_at_every_size_with_few_compiles() -> None:
    norm = nn.GroupNorm(8, 32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    keep_channels_last(norm, norm="compiled")
    torch._dynamo.reset()
    compiled_group_norm_channels_last.cache_clear()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    generator = torch.Generator().manual_seed(5)
    for n, height, width in ((2, 6, 10), (2, 12, 8), (4, 7, 7), (2, 16, 16)):
        nchw = torch.randn(n, 32, height, width, generator=generator) * 3 + 1
        expected = F.group_norm(nchw, 8, norm.weight, norm.bias, norm.eps)
        with torch.no_grad():
            routed = norm(nchw.contiguous(memory_format=torch.channels_last))
        assert routed.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(routed, expected, atol=1e-5, rtol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before <= 2  # not one per size


@pytest.mark.parametrize(
    ("shape", "groups"), [((2, 64, 6, 10), 32), ((1, 96, 17, 16), 8), ((3, 40, 3, 5), 4)]
)
def test_triton_group_norm_matches_pytorchs_at_sizes_off_the_tiles(
    triton_device: torch.device, shape: tuple[int, int, int, int], groups: int
) -> None:
    """The transformers' GroupNorm (no SiLU) on the kernels of the fused resnet norms."""
    x = channels_last_randn(shape, seed=sum(shape))
    generator = torch.Generator().manual_seed(3)
    weight, bias = (torch.randn(shape[1], generator=generator) for _ in range(2))

    on = [t.to(triton_device) for t in (x, weight, bias)]
    result = triton_group_norm.group_norm(*on[:1], groups, *on[1:], 1e-6).cpu()

    assert result.is_contiguous(memory_format=torch.channels_last)
    expected = F.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-6)
    torch.testing.assert_close(result.double(), expected, atol=2e-5, rtol=2e-5)


def test_kept_group_norms_run_the_triton_kernels_when_asked_and_pytorch_where_they_cannot(
    triton_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []
    original = triton_group_norm.group_norm

    def counted(x: torch.Tensor, *norm: Any) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return original(x, *norm)

    monkeypatch.setattr(triton_group_norm, "group_norm", counted)
    norm, plain = nn.GroupNorm(8, 32).to(triton_device), nn.GroupNorm(8, 32, affine=False).to(triton_device)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    for module in (norm, plain):
        keep_channels_last(module, norm="triton")
    nchw = torch.randn(2, 32, 5, 7, generator=torch.Generator().manual_seed(4)).to(triton_device)
    channels_last = nchw.contiguous(memory_format=torch.channels_last)

    with torch.no_grad():
        routed, planar, unscaled = norm(channels_last), norm(nchw), plain(channels_last)

    assert calls == [(2, 32, 5, 7)]  # the channels_last input of the norm with weight and bias only
    torch.testing.assert_close(routed, F.group_norm(nchw, 8, norm.weight, norm.bias, norm.eps))
    torch.testing.assert_close(planar, F.group_norm(nchw, 8, norm.weight, norm.bias, norm.eps))
    torch.testing.assert_close(unscaled, F.group_norm(nchw, 8, eps=plain.eps), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="norm must be one of"):
        keep_channels_last(nn.GroupNorm(8, 32), norm="fast")


def test_transformer_output_stays_channels_last_with_the_same_values() -> None:
    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    unet.to(memory_format=torch.channels_last)
    (transformer, *_) = [m for m in unet.modules() if type(m).__name__ == "Transformer2DModel"]
    generator = torch.Generator().manual_seed(3)
    channels = transformer.config.in_channels
    x = torch.randn(2, channels, 8, 8, generator=generator).contiguous(memory_format=torch.channels_last)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        expected = transformer(x, encoder_hidden_states=text, return_dict=False)[0]

        kept = keep_channels_last(transformer)
        result = transformer(x, encoder_hidden_states=text, return_dict=False)[0]

    assert kept.transformer_outputs == 1 and kept.group_norms == 1
    assert expected.is_contiguous() and not expected.is_contiguous(memory_format=torch.channels_last)
    assert result.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


class OperatorCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_a_channels_last_unet_call_copies_no_activation_once_kept() -> None:
    unet = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).unet.eval()
    unet.to(memory_format=torch.channels_last)
    x, text, added = channels_last_unet_inputs(unet, seed=4)
    counts = []
    for keep in (False, True):
        if keep:
            keep_channels_last(unet)
        with torch.no_grad(), OperatorCount() as counted:
            unet(x, 500, encoder_hidden_states=text, added_cond_kwargs=added)
        counts.append(counted.calls)
    copying, kept = counts

    assert copying["clone"] >= 2 and copying["native_group_norm"] > 0  # the transformers' .contiguous()
    assert kept["clone"] == 0 and kept["native_group_norm"] == 0 and kept["copy_"] == 0


def test_engine_keeping_channels_last_renders_the_same_image(tmp_path: Path) -> None:
    copying = tiny_engine_with(tmp_path, layout_on_cpu=True, keep_channels_last="off")
    kept = tiny_engine_with(tmp_path, layout_on_cpu=True)
    request = default_request(seed=9)

    difference = np.abs(pixels_of(kept, request) - pixels_of(copying, request))

    record = kept.describe()["acceleration"]
    assert record["keep_channels_last"] is True
    assert record["kept_channels_last"]["group_norms"] > 20  # UNet and VAE
    assert record["kept_channels_last"]["transformer_outputs"] >= 2
    assert copying.describe()["acceleration"]["keep_channels_last"] is False
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_keeping_channels_last_is_the_default_wherever_the_model_is_channels_last() -> None:
    h100 = HardwareFacts("cuda", (9, 0), 80 * 2**30, True)
    cuda = torch.device("cuda")

    default = plan_acceleration(AccelerationOptions(vram="high"), cuda, torch.bfloat16, hardware=h100)
    assert default.keep_channels_last
    assert EngineSettings().keep_channels_last == "on"
    cpu = plan_acceleration(AccelerationOptions(vram="high"), torch.device("cpu"), torch.float32)
    assert not cpu.keep_channels_last and not any(note.startswith("keep_channels_last") for note in cpu.notes)
    planar = AccelerationOptions(vram="high", channels_last=False)
    plan = plan_acceleration(planar, cuda, torch.bfloat16, hardware=h100)
    assert not plan.keep_channels_last and not plan.channels_last
    assert "keep_channels_last off: channels_last is off" in plan.notes
