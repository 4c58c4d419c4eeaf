"""Fooocus's guidance refinements as pure tensor functions (no model, no scheduler state).

Everything here works on the UNet's noise prediction ``eps`` for one denoising step:

- ``diffusion_progress``: p = 1 − t/999, 0 at pure noise and 1 at the clean image.
- Sharpness: the conditional ``eps`` is blended with a copy of itself smoothed by a joint bilateral
  filter guided by the model's own clean-image estimate x0, so smoothing stays inside regions the
  model already sees as one surface and stops at its edges (Fooocus's "never plastic" trick).
- Adaptive CFG: with a high CFG, early steps use ``adaptive_cfg`` instead, and the real CFG fades in
  as p grows.

The maths follow the formulas in /work/shared/reference/fooocus-behaviour.md §5.4–5.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fooocusd.engine import triton_bilateral

LAST_TRAINING_TIMESTEP = 999
SHARPNESS_KERNEL_SIZE = 13
SHARPNESS_SIGMA_COLOR = 3.0
SHARPNESS_SIGMA_SPACE = 3.0
SHARPNESS_STRENGTH = 0.001
_STD_FLOOR = 1e-8


def diffusion_progress(timestep: float, last_timestep: int = LAST_TRAINING_TIMESTEP) -> float:
    """p = 1 − t/last, clamped to [0, 1]: 0 at the noisiest timestep, 1 at the clean image."""
    return min(1.0, max(0.0, 1.0 - float(timestep) / last_timestep))


def sharpness_weight(sharpness: float, progress: float) -> float:
    """α = 0.001 · sharpness · p, the share of the filtered prediction blended in."""
    return SHARPNESS_STRENGTH * sharpness * progress


def standardize_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Each sample shifted to mean 0 and scaled to standard deviation 1 over all its channels and pixels."""
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True).clamp_min(_STD_FLOOR)
    return (x - mean) / std


def gaussian_window(
    kernel_size: int, sigma: float, *, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A ``kernel_size``² Gaussian (not normalised: the bilateral filter normalises its weights itself)."""
    offsets = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size - 1) / 2
    line = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return line[:, None] * line[None, :]


def joint_bilateral_blur(
    image: torch.Tensor,
    guide: torch.Tensor,
    kernel_size: int = SHARPNESS_KERNEL_SIZE,
    sigma_color: float = SHARPNESS_SIGMA_COLOR,
    sigma_space: float = SHARPNESS_SIGMA_SPACE,
) -> torch.Tensor:
    """Smooth ``image`` (B, C, H, W) with weights taken from ``guide`` (B, G, H, W).

    The weight of neighbour q for pixel p is gauss(|p − q|, sigma_space) ·
    gauss(Σ_channels |guide_q − guide_p|, sigma_color) (an L1 colour distance); borders are reflected.
    Computed in float32 whatever the input dtype, returned in the input dtype.
    """
    if image.shape[0] != guide.shape[0] or image.shape[-2:] != guide.shape[-2:]:
        raise ValueError(f"guide {tuple(guide.shape)} does not match image {tuple(image.shape)}")
    height, width = image.shape[-2:]
    pad = kernel_size // 2
    taps = kernel_size * kernel_size
    work_image = image.float()
    work_guide = guide.float()

    def neighbourhoods(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        return F.unfold(padded, kernel_size).view(x.shape[0], x.shape[1], taps, height, width)

    guide_taps = neighbourhoods(work_guide)
    colour_distance = (guide_taps - work_guide.unsqueeze(2)).abs().sum(dim=1)  # (B, taps, H, W)
    colour_weight = torch.exp(-0.5 * (colour_distance / sigma_color) ** 2)
    space_weight = gaussian_window(kernel_size, sigma_space, dtype=torch.float32, device=image.device)
    weight = colour_weight * space_weight.reshape(1, taps, 1, 1)
    image_taps = neighbourhoods(work_image)  # (B, C, taps, H, W)
    blurred = (image_taps * weight.unsqueeze(1)).sum(dim=2) / weight.sum(dim=1, keepdim=True)
    return blurred.to(image.dtype)


def sharpen_noise_prediction(eps: torch.Tensor, x0: torch.Tensor, alpha: float) -> torch.Tensor:
    """eps' = α · joint_bilateral_blur(eps, standardised x0) + (1 − α) · eps; on a GPU as one
    Triton kernel (``triton_bilateral.py``)."""
    if alpha == 0.0:
        return eps
    guide = standardize_per_sample(x0)
    if triton_bilateral.runs_on(eps, SHARPNESS_KERNEL_SIZE):
        window = (SHARPNESS_KERNEL_SIZE, SHARPNESS_SIGMA_COLOR, SHARPNESS_SIGMA_SPACE)
        return triton_bilateral.sharpen(eps, guide, alpha, *window)
    filtered = joint_bilateral_blur(eps, guide)
    return alpha * filtered + (1.0 - alpha) * eps


def guided_noise_prediction(
    uncond: torch.Tensor, cond: torch.Tensor, cfg: float, adaptive_cfg: float, progress: float
) -> torch.Tensor:
    """Classifier-free guidance with Fooocus's adaptive CFG ("CFG mimicking").

    real = uncond + cfg · (cond − uncond). When cfg > adaptive_cfg the result is
    real · p + mimic · (1 − p) with mimic = uncond + adaptive_cfg · (cond − uncond); otherwise ``real``.
    """
    real = uncond + cfg * (cond - uncond)
    if cfg <= adaptive_cfg:
        return real
    mimic = uncond + adaptive_cfg * (cond - uncond)
    return real * progress + mimic * (1.0 - progress)


def noise_levels(alphas_cumprod: torch.Tensor, timesteps: list[float]) -> list[float]:
    """The k-diffusion σ = √((1 − ᾱ)/ᾱ) the model assumes at each of ``timesteps``.

    Fractional timesteps (some schedulers' Karras schedules) are interpolated linearly in log σ, the
    inverse of how those schedulers turn a σ into a timestep.
    """
    cumprod = alphas_cumprod.detach().double().cpu()
    log_sigmas = (0.5 * torch.log((1 - cumprod) / cumprod)).tolist()
    last = len(log_sigmas) - 1
    levels = []
    for timestep in timesteps:
        position = min(max(float(timestep), 0.0), float(last))
        low = math.floor(position)
        high = min(low + 1, last)
        fraction = position - low
        levels.append(math.exp((1 - fraction) * log_sigmas[low] + fraction * log_sigmas[high]))
    return levels
