"""GroupNorm computed in the channels_last layout (``group_norm.py``, ``engine.group_norm``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fooocusd.engine.acceleration import AccelerationOptions, plan_acceleration
from fooocusd.engine.group_norm import (
    group_norm_channels_last,
    use_channels_last_group_norm,
    use_native_group_norm,
)
from tests.engine_helpers import default_request, pixels_of, tiny_engine_with


def _channels_last(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator) * 3.0 + 1.5  # a mean far from 0, as activations have
    return values.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_channels_last_group_norm_matches_pytorchs_and_keeps_the_layout(
    dtype: torch.dtype, tolerance: float, affine: bool
) -> None:
    x = _channels_last((2, 64, 6, 10), dtype, seed=1)
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

    assert use_channels_last_group_norm(wrapped) == 1
    assert use_channels_last_group_norm(wrapped) == 0  # already routed
    with torch.no_grad():
        assert torch.equal(norm(nchw), expected)  # not channels_last: PyTorch's own, bit for bit
        routed = norm(channels_last)
    assert routed.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(routed, expected, atol=1e-5, rtol=1e-5)

    assert use_native_group_norm(wrapped) == 1
    assert "forward" not in vars(norm)


def test_engine_with_channels_last_group_norm_renders_the_same_image(tmp_path: Path) -> None:
    native = tiny_engine_with(tmp_path, layout_on_cpu=True)
    routed = tiny_engine_with(tmp_path, layout_on_cpu=True, group_norm="channels_last")
    request = default_request(seed=9)

    difference = np.abs(pixels_of(routed, request) - pixels_of(native, request))

    record = routed.describe()["acceleration"]
    assert record["group_norm"] == "channels_last" and record["group_norms"] > 20  # UNet and VAE
    assert native.describe()["acceleration"]["group_norm"] == "native"
    assert difference.max() <= 2 and difference.mean() < 0.05


def test_channels_last_group_norm_is_not_planned_where_the_model_is_not_channels_last() -> None:
    options = AccelerationOptions(vram="high", group_norm="channels_last")

    plan = plan_acceleration(options, torch.device("cpu"), torch.float32)

    assert plan.group_norm == "native" and not plan.channels_last
    assert any(note.startswith("group_norm native") for note in plan.notes)
