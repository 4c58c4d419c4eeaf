"""Fooocus's guidance maths (sharpness, adaptive CFG, noise levels) checked on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from fooocusd.engine.guidance import (
    diffusion_progress,
    guided_noise_prediction,
    joint_bilateral_blur,
    noise_levels,
    sharpen_noise_prediction,
    sharpness_weight,
    standardize_per_sample,
)
from fooocusd.engine.models import SDXL_CONFIG_DIR


def _slow_joint_bilateral_blur(
    image: torch.Tensor, guide: torch.Tensor, kernel_size: int, sigma_color: float, sigma_space: float
) -> torch.Tensor:
    """Straight from the definition: loops over every pixel and every neighbour."""

    def reflect(index: int, size: int) -> int:
        if index < 0:
            return -index
        if index >= size:
            return 2 * (size - 1) - index
        return index

    batch, channels, height, width = image.shape
    radius = kernel_size // 2
    out = torch.zeros_like(image, dtype=torch.float64)
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                total_weight = 0.0
                accumulated = torch.zeros(channels, dtype=torch.float64)
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        ny, nx = reflect(y + dy, height), reflect(x + dx, width)
                        space = math.exp(-0.5 * (dy * dy + dx * dx) / sigma_space**2)
                        distance = float((guide[b, :, ny, nx] - guide[b, :, y, x]).abs().sum())
                        colour = math.exp(-0.5 * (distance / sigma_color) ** 2)
                        weight = space * colour
                        total_weight += weight
                        accumulated += weight * image[b, :, ny, nx].double()
                out[b, :, y, x] = accumulated / total_weight
    return out.to(image.dtype)


def test_joint_bilateral_blur_matches_the_per_pixel_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 4, 9, 11, generator=generator)
    guide = torch.randn(2, 4, 9, 11, generator=generator)
    fast = joint_bilateral_blur(image, guide, kernel_size=5, sigma_color=1.5, sigma_space=2.0)
    slow = _slow_joint_bilateral_blur(image, guide, kernel_size=5, sigma_color=1.5, sigma_space=2.0)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_joint_bilateral_blur_with_fooocus_kernel_matches_the_definition() -> None:
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(1, 4, 8, 8, generator=generator)
    guide = standardize_per_sample(torch.randn(1, 4, 8, 8, generator=generator))
    fast = joint_bilateral_blur(image, guide)  # 13×13, σ_color 3, σ_space 3, reflect needs side > 6
    slow = _slow_joint_bilateral_blur(image, guide, kernel_size=13, sigma_color=3.0, sigma_space=3.0)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_bilateral_blur_does_not_smooth_across_an_edge_in_the_guide() -> None:
    guide = torch.zeros(1, 1, 8, 8)
    guide[..., 4:] = 100.0  # a hard vertical edge
    image = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    image[..., :4] += 10.0
    blurred = joint_bilateral_blur(image, guide, kernel_size=5)
    assert torch.allclose(blurred[..., :4].mean(), image[..., :4].mean(), atol=0.5)
    assert blurred[..., :4].min() > 8.0 and blurred[..., 4:].max() < 3.0  # no leak across the edge
    assert blurred[..., :4].std() < image[..., :4].std()  # but smoothed within each side


def test_bilateral_blur_keeps_the_input_dtype() -> None:
    image = torch.randn(1, 4, 8, 8).to(torch.bfloat16)
    assert joint_bilateral_blur(image, image).dtype == torch.bfloat16


def test_standardize_per_sample_gives_zero_mean_unit_std_for_each_sample() -> None:
    x = torch.randn(3, 4, 5, 5) * torch.tensor([1.0, 5.0, 0.1]).view(3, 1, 1, 1) + 7.0
    standard = standardize_per_sample(x)
    assert torch.allclose(standard.mean(dim=(1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(standard.std(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)


def test_progress_runs_from_zero_at_timestep_999_to_one_at_timestep_0() -> None:
    assert diffusion_progress(999) == 0.0
    assert diffusion_progress(0) == 1.0
    assert diffusion_progress(699.3) == pytest.approx(1 - 699.3 / 999)


def test_sharpness_weight_is_a_thousandth_of_sharpness_times_progress() -> None:
    assert sharpness_weight(2.0, 1.0) == pytest.approx(0.002)
    assert sharpness_weight(30.0, 0.5) == pytest.approx(0.015)
    assert sharpness_weight(2.0, 0.0) == 0.0


def test_sharpened_prediction_blends_the_filtered_prediction_by_alpha() -> None:
    generator = torch.Generator().manual_seed(3)
    eps = torch.randn(1, 4, 8, 8, generator=generator)
    x0 = torch.randn(1, 4, 8, 8, generator=generator)
    alpha = 0.3
    expected = alpha * joint_bilateral_blur(eps, standardize_per_sample(x0)) + (1 - alpha) * eps
    assert torch.allclose(sharpen_noise_prediction(eps, x0, alpha), expected, atol=1e-6)
    assert sharpen_noise_prediction(eps, x0, 0.0) is eps


def test_guide_scale_and_offset_do_not_change_the_sharpened_prediction() -> None:
    generator = torch.Generator().manual_seed(4)
    eps = torch.randn(1, 4, 8, 8, generator=generator)
    x0 = torch.randn(1, 4, 8, 8, generator=generator)
    assert torch.allclose(
        sharpen_noise_prediction(eps, x0, 0.5), sharpen_noise_prediction(eps, 3.0 * x0 + 2.0, 0.5), atol=1e-5
    )


def test_cfg_at_or_below_adaptive_cfg_is_plain_cfg() -> None:
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    expected = uncond + 7.0 * (cond - uncond)
    assert torch.equal(guided_noise_prediction(uncond, cond, 7.0, 7.0, 0.3), expected)
    assert torch.equal(guided_noise_prediction(uncond, cond, 4.0, 7.0, 0.3), uncond + 4.0 * (cond - uncond))


def test_cfg_above_adaptive_cfg_fades_from_mimic_to_real_with_progress() -> None:
    uncond, cond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    real = uncond + 12.0 * (cond - uncond)
    mimic = uncond + 7.0 * (cond - uncond)
    assert torch.allclose(guided_noise_prediction(uncond, cond, 12.0, 7.0, 0.0), mimic)
    assert torch.allclose(guided_noise_prediction(uncond, cond, 12.0, 7.0, 1.0), real)
    assert torch.allclose(guided_noise_prediction(uncond, cond, 12.0, 7.0, 0.25), real * 0.25 + mimic * 0.75)


def test_noise_levels_at_whole_timesteps_follow_the_training_schedule() -> None:
    alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
    levels = noise_levels(alphas_cumprod, [0.0, 500.0, 999.0])
    expected = [math.sqrt((1 - float(a)) / float(a)) for a in alphas_cumprod[[0, 500, 999]]]
    assert levels == pytest.approx(expected, rel=1e-9)


def test_noise_levels_at_fractional_timesteps_invert_the_schedulers_karras_mapping() -> None:
    scheduler = EulerDiscreteScheduler.from_pretrained(
        SDXL_CONFIG_DIR, subfolder="scheduler", local_files_only=True, use_karras_sigmas=True
    )
    scheduler.set_timesteps(12)
    levels = noise_levels(scheduler.alphas_cumprod, scheduler.timesteps.tolist())
    assert levels == pytest.approx(scheduler.sigmas[:-1].tolist(), rel=1e-3)
