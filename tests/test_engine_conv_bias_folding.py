"""Fused resnet blocks run their convolutions without biases, which the passes around them add:
``conv1``'s in ``norm2``'s shift, ``conv2``'s and the shortcut's in one residual pass
(``fused_resnet.bias_free_convs``, ``triton_residual.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.models.resnet import ResnetBlock2D
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from fooocusd.engine import triton_group_norm, triton_residual
from fooocusd.engine.fused_resnet import (
    add_bias_residual,
    bias_free_convs,
    fuse_resnet_norms,
    group_norm_silu,
    plain_conv,
    triton_kernels_fail,
)
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from tests.engine_helpers import channels_last_randn, tiny_unet_with_random_norms


@contextmanager
def biases_given_to_convolutions() -> Iterator[list[bool]]:
    """Whether each convolution run meanwhile was handed its bias."""
    given: list[bool] = []
    original = nn.Conv2d._conv_forward

    def recording(self: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        given.append(bias is not None)
        return original(self, x, weight, bias)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nn.Conv2d, "_conv_forward", recording)
        yield given


def _block_and_inputs(
    unet: nn.Module, *, shortcut: bool, seed: int
) -> tuple[ResnetBlock2D, torch.Tensor, torch.Tensor]:
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D) and m.time_emb_proj is not None]
    block = next(m for m in resnets if (m.conv_shortcut is not None) == shortcut)
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, block.norm1.num_channels, 8, 8, generator=generator) * 2 + 1).contiguous(
        memory_format=torch.channels_last
    )
    return block, x, torch.randn(2, block.time_emb_proj.in_features, generator=generator)


@pytest.mark.parametrize("shortcut", [False, True])
def test_a_fused_block_runs_its_convolutions_without_biases_and_gives_diffusers_result(
    shortcut: bool,
) -> None:
    block, x, temb = _block_and_inputs(tiny_unet_with_random_norms(), shortcut=shortcut, seed=1)
    with torch.no_grad():
        expected = block(x, temb)
        fuse_resnet_norms(block, kernel="eager")
        with biases_given_to_convolutions() as given:
            fused = block(x, temb)

    assert given == [False] * (3 if shortcut else 2)  # conv1, conv2 (and the 1×1 shortcut)
    torch.testing.assert_close(fused, expected, atol=2e-5, rtol=2e-5)


def test_a_vae_resnet_without_time_input_folds_conv1s_bias_as_a_shift_for_every_sample(
    triton_device: torch.device,
) -> None:
    vae = build_tiny_sdxl_pipeline(EulerDiscreteScheduler()).vae.eval().to(triton_device)
    vae.to(memory_format=torch.channels_last)
    block = next(m for m in vae.decoder.modules() if isinstance(m, ResnetBlock2D))
    assert block.time_emb_proj is None
    x = channels_last_randn((3, block.norm1.num_channels, 6, 5), seed=2).to(triton_device)
    with torch.no_grad():
        expected = block(x, None)
        fuse_resnet_norms(block, kernel="triton")
        with biases_given_to_convolutions() as given:
            fused = block(x, None)

    assert given == [False, False]
    torch.testing.assert_close(fused, expected, atol=1e-4, rtol=1e-4)


def test_a_fused_block_with_an_active_lora_on_a_convolution_calls_it_as_a_module() -> None:
    block, x, temb = _block_and_inputs(tiny_unet_with_random_norms(), shortcut=False, seed=3)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["conv1"], init_lora_weights=False), block)
    assert plain_conv(block.conv1) is None and bias_free_convs(block, x.device) is None
    with torch.no_grad():
        with_lora = block(x, temb)
        block.conv1.enable_adapters(False)  # as lora_merge leaves a LoRA folded into the weights
        assert plain_conv(block.conv1) is block.conv1.base_layer
        without = block(x, temb)
        fuse_resnet_norms(block, kernel="eager")
        fused_without = block(x, temb)
        block.conv1.enable_adapters(True)
        fused_with_lora = block(x, temb)

    assert not torch.allclose(with_lora, without)  # the LoRA changes the result: the test sees it
    torch.testing.assert_close(fused_without, without, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(fused_with_lora, with_lora, atol=2e-5, rtol=2e-5)


def test_a_convolution_behind_a_hook_is_not_plain() -> None:
    conv = nn.Conv2d(4, 4, 3)
    assert plain_conv(conv) is conv
    handle = conv.register_forward_pre_hook(lambda *_: None)
    assert plain_conv(conv) is None
    handle.remove()
    conv.forward = conv.forward  # as accelerate's offloading hooks wrap it
    assert plain_conv(conv) is None


@pytest.mark.parametrize(("shape", "scale"), [((2, 40, 3, 5), 1.0), ((1, 96, 9, 8), 2.0)])
def test_triton_residual_pass_adds_bias_and_residual_over_the_convolutions_output(
    triton_device: torch.device, shape: tuple[int, int, int, int], scale: float
) -> None:
    """Channel counts and pixel counts off the 64 × 64 tile; with and without a scale factor."""
    hidden, residual = (channels_last_randn(shape, seed=seed) for seed in (4, 5))
    bias = torch.randn(shape[1], generator=torch.Generator().manual_seed(6))
    expected = (hidden + bias.view(1, -1, 1, 1) + residual) / scale
    on = [t.clone().to(triton_device) for t in (hidden, bias, residual)]

    result = triton_residual.add_bias_residual(on[0], on[1], on[2], scale)

    assert result.data_ptr() == on[0].data_ptr()  # written over the convolution's output
    assert result.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(result.cpu(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(add_bias_residual(hidden, bias, residual, scale), expected)


def test_triton_residual_pass_refuses_tensors_it_cannot_read(triton_device: torch.device) -> None:
    bias = torch.zeros(8, device=triton_device)
    planar = torch.zeros(1, 8, 4, 4, device=triton_device)
    tiled = planar.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels_last"):
        triton_residual.add_bias_residual(planar, bias, tiled)
    with pytest.raises(ValueError, match="does not fit"):
        triton_residual.add_bias_residual(tiled, bias, tiled[:, :, :2])


def test_triton_norm_takes_one_shift_for_every_sample(triton_device: torch.device) -> None:
    x = channels_last_randn((3, 64, 5, 6), seed=7)
    generator = torch.Generator().manual_seed(8)
    weight, bias = (torch.randn(64, generator=generator) for _ in range(2))
    shift = torch.randn(1, 64, 1, 1, generator=generator)
    on = [t.to(triton_device) for t in (x, weight, bias, shift)]

    result = triton_group_norm.group_norm_silu(on[0], 32, on[1], on[2], 1e-5, on[3]).cpu()

    expected = group_norm_silu(x, 32, weight, bias, 1e-5, shift)
    torch.testing.assert_close(result, expected, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="does not fit"):
        triton_group_norm.group_norm_silu(on[0], 32, on[1], on[2], 1e-5, on[3].expand(2, -1, -1, -1))


def test_a_residual_kernel_that_disagrees_is_named_by_the_load_time_check(
    triton_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_residual, "add_bias_residual", lambda hidden, *_: torch.zeros_like(hidden))
    assert "bias + residual" in triton_kernels_fail(triton_device, torch.float32)


def test_a_fused_block_compiles_as_one_graph_for_a_whole_unet_compile() -> None:
    """Under ``compile = "unet_full"`` the fused passes are PyTorch operators that inductor traces
    and fuses: the bias folding must not break the graph."""
    block, x, temb = _block_and_inputs(tiny_unet_with_random_norms(), shortcut=True, seed=9)
    with torch.no_grad():
        expected = block(x, temb)
        fuse_resnet_norms(block, kernel="eager")
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)
        torch.testing.assert_close(compiled(x, temb), expected, atol=1e-4, rtol=1e-4)
