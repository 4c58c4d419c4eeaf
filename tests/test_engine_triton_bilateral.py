"""Fooocus's sharpness filter and blend as one Triton kernel (``triton_bilateral.py``), here run by
Triton's CPU interpreter (tests/conftest.py) where there is no GPU."""

from __future__ import annotations

import pytest
import torch

from fooocusd.engine import triton_bilateral
from fooocusd.engine.guidance import (
    SHARPNESS_KERNEL_SIZE,
    SHARPNESS_SIGMA_COLOR,
    SHARPNESS_SIGMA_SPACE,
    joint_bilateral_blur,
    sharpen_noise_prediction,
    standardize_per_sample,
)
from fooocusd.engine.sync_audit import HostSyncAudit, on_virtual_device

WINDOW = (SHARPNESS_KERNEL_SIZE, SHARPNESS_SIGMA_COLOR, SHARPNESS_SIGMA_SPACE)


def _inputs(shape: tuple[int, int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(shape, generator=generator)
    guide = standardize_per_sample(torch.randn(shape, generator=generator) * 2 + 1)
    return eps, guide


def _pytorch(eps: torch.Tensor, guide: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * joint_bilateral_blur(eps.float(), guide, *WINDOW) + (1 - alpha) * eps.float()


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(("shape", "alpha"), [((2, 4, 12, 10), 0.3), ((1, 3, 7, 9), 1.0)])
def test_triton_sharpening_matches_the_pytorch_filter_and_blend_at_every_pixel_and_border(
    triton_device: torch.device, channels_last: bool, shape: tuple[int, int, int, int], alpha: float
) -> None:
    """Windows reflected at every border (a 13×13 window on 7 rows reflects at both edges at once)."""
    eps, guide = _inputs(shape, seed=sum(shape))
    if channels_last:
        eps = eps.contiguous(memory_format=torch.channels_last)

    result = triton_bilateral.sharpen(eps.to(triton_device), guide.to(triton_device), alpha, *WINDOW).cpu()

    assert result.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(result, _pytorch(eps, guide, alpha), atol=1e-5, rtol=1e-5)


def test_triton_sharpening_writes_bfloat16_within_its_rounding(triton_device: torch.device) -> None:
    eps, guide = _inputs((1, 4, 9, 8), seed=3)
    eps = eps.bfloat16()

    result = triton_bilateral.sharpen(eps.to(triton_device), guide.to(triton_device), 0.5, *WINDOW).cpu()

    assert result.dtype == torch.bfloat16
    expected = _pytorch(eps, guide, 0.5)
    assert float((result.float() - expected).norm() / expected.norm()) < 1e-2


def test_sharpening_takes_the_kernel_only_on_a_gpu_and_for_windows_that_fit() -> None:
    eps = torch.zeros(1, 4, 16, 16)
    assert not triton_bilateral.runs_on(eps, SHARPNESS_KERNEL_SIZE)  # a CPU tensor: PyTorch's filter
    assert triton_bilateral.check(torch.device("cpu")) == ""  # nothing to check ahead there
    with HostSyncAudit():  # host memory presented as a GPU's: no kernel may take its pointers
        virtual = torch.zeros(1, 4, 16, 16, device="cuda")
        assert virtual.is_cuda and on_virtual_device(virtual)
        assert not triton_bilateral.runs_on(virtual, SHARPNESS_KERNEL_SIZE)
    with pytest.raises(ValueError, match="does not reflect"):
        triton_bilateral.sharpen(torch.zeros(1, 4, 6, 16), torch.zeros(1, 4, 6, 16), 0.5, *WINDOW)
    with pytest.raises(ValueError, match="does not match"):
        triton_bilateral.sharpen(eps, torch.zeros(2, 4, 16, 16), 0.5, *WINDOW)


def test_the_noise_prediction_is_sharpened_by_the_kernel_where_it_runs(
    triton_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    eps, x0 = _inputs((1, 4, 10, 11), seed=4)
    expected = sharpen_noise_prediction(eps, x0, 0.25)  # the PyTorch filter: a CPU tensor
    calls = []
    original = triton_bilateral.sharpen

    def counted(*args: object) -> torch.Tensor:
        calls.append(args[2])
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(triton_bilateral, "runs_on", lambda eps, size: True)
    monkeypatch.setattr(triton_bilateral, "sharpen", counted)

    result = sharpen_noise_prediction(eps.to(triton_device), x0.to(triton_device), 0.25).cpu()

    assert calls == [0.25]
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_a_kernel_that_disagrees_or_raises_leaves_sharpening_to_pytorch(
    triton_device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    triton_bilateral.kernel_fails.cache_clear()
    assert triton_bilateral.kernel_fails(triton_device) == ""
    triton_bilateral.kernel_fails.cache_clear()
    monkeypatch.setattr(triton_bilateral, "sharpen", lambda eps, *rest: torch.zeros_like(eps))
    assert "relative error" in triton_bilateral.kernel_fails(triton_device)
    triton_bilateral.kernel_fails.cache_clear()

    def broken(*args: object) -> torch.Tensor:
        raise RuntimeError("ptxas fatal: unsupported GPU")

    monkeypatch.setattr(triton_bilateral, "sharpen", broken)
    assert triton_bilateral.kernel_fails(triton_device) == "RuntimeError: ptxas fatal: unsupported GPU"
    triton_bilateral.kernel_fails.cache_clear()
