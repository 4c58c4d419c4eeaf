"""fp8 UNet weights (engine.quantize = "fp8") with torchao: numerics on the CPU, LoRAs on top.

torchao's fp8 tensor runs on the CPU (torch has a CPU ``_scaled_mm``), so the real quantiser and a
real tiny-random render are checked here; ``quantize_on_cpu`` lets the planner apply it on the CPU.
torchao comes with the ``fp8`` extra, which ``scripts/setup.sh`` installs for the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip(
    "torchao",
    minversion="0.18",
    reason="torchao (the fp8 extra: pip install -e '.[fp8]') is not installed; fp8 cannot be checked",
)

from fooocusd.engine.quantization import is_fp8, quantize_unet_fp8, transformer_linears
from fooocusd.engine.sdxl import SDXLEngine
from tests.engine_helpers import default_request, models_root_with_ink_lora, pixels_of, tiny_engine_with


class _Block(nn.Module):
    """Named like a UNet: ``attentions`` holds the transformer Linears, ``time_embedding`` does not."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.time_embedding = nn.Linear(32, 64)
        self.attentions = nn.ModuleList([nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))])
        self.odd = nn.ModuleList([nn.Linear(64, 40)])  # not under attentions
        self.attentions.append(nn.Linear(64, 40))  # 40 outputs: not a multiple of 16
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1


def _engine(root: Path, **options: object) -> SDXLEngine:
    return tiny_engine_with(root, dtype="bfloat16", **options)


_pixels = pixels_of


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models_root_with_ink_lora(tmp_path_factory.mktemp("quantization"))


@pytest.fixture(scope="module")
def bf16(root: Path) -> SDXLEngine:
    return _engine(root)


@pytest.fixture(scope="module")
def fp8(root: Path) -> SDXLEngine:
    return _engine(root, quantize="fp8", quantize_on_cpu=True)


def test_only_aligned_bf16_transformer_linears_get_fp8_weights() -> None:
    block = _Block().to(torch.bfloat16)
    result = quantize_unet_fp8(block)
    assert result.layers == 2
    assert is_fp8(block.attentions[0][0].weight) and is_fp8(block.attentions[0][2].weight)
    assert not is_fp8(block.time_embedding.weight) and not is_fp8(block.odd[0].weight)
    assert "multiples of 16" in result.skipped["attentions.1"]
    assert result.bytes_saved == (64 * 128 + 128 * 64) * 1  # bf16 → fp8: one byte per weight
    assert quantize_unet_fp8(block).layers == 0  # already fp8: nothing done twice


def test_fp8_linears_compute_what_the_bf16_ones_do_within_fp8_rounding() -> None:
    block = _Block().to(torch.bfloat16)
    inputs = torch.randn(8, 64, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = block.attentions[0](inputs).float()
        quantize_unet_fp8(block)
        actual = block.attentions[0](inputs).float()
    relative = (actual - expected).norm() / expected.norm()
    assert 0 < relative < 0.08  # e4m3 keeps 3 mantissa bits: a few percent, not more


def test_fp32_weights_are_left_alone_with_the_reason() -> None:
    block = _Block()
    result = quantize_unet_fp8(block)
    assert result.layers == 0 and "bfloat16" in result.skipped["attentions.0.0"]


def test_tiny_random_render_with_fp8_stays_close_to_the_bf16_render(
    bf16: SDXLEngine, fp8: SDXLEngine
) -> None:
    request = default_request(steps=4)
    plain = _pixels(bf16, request)
    quantized = _pixels(fp8, request)
    other_seed = _pixels(bf16, default_request(steps=4, seed=request.seed + 1))
    fp8_error = np.abs(quantized - plain).mean()
    assert 0 < fp8_error < 4  # out of 255
    assert fp8_error * 5 < np.abs(other_seed - plain).mean()  # far closer than another image
    record = fp8.describe()["acceleration"]
    unet = fp8._pipeline.unet  # type: ignore[union-attr]
    assert record["quantize"] == "fp8"
    assert record["quantized_layers"] == sum(1 for _ in transformer_linears(unet)) > 0
    assert not record["fuse_qkv"]
    assert not is_fp8(unet.time_embedding.linear_1.weight)


def test_a_lora_runs_beside_the_fp8_layers_and_off_again_restores_the_fp8_image(
    bf16: SDXLEngine, fp8: SDXLEngine
) -> None:
    with_lora = default_request(steps=3, loras=(("ink", 1.0),))
    without = default_request(steps=3)
    quantized_plain = _pixels(fp8, without)
    quantized_lora = _pixels(fp8, with_lora)
    assert np.abs(quantized_lora - quantized_plain).max() > 10  # the LoRA acts
    assert np.abs(quantized_lora - _pixels(bf16, with_lora)).mean() < 5  # as it does on bf16 weights
    attention = fp8._pipeline.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1  # type: ignore[union-attr]
    assert type(attention.to_q).__name__ == "TorchaoLoraLinear"
    assert is_fp8(attention.to_q.base_layer.weight)  # the base weights stay fp8
    assert np.array_equal(_pixels(fp8, without), quantized_plain)
