"""Torch devices and dtypes: reading ``engine.device``/``engine.dtype``, freeing and syncing memory."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import torch

from fooocusd.errors import ConfigError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(setting: str) -> torch.device:
    """``engine.device`` → a torch device. ``auto``: cuda, else mps, else cpu."""
    value = setting.strip().lower()
    if value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise ConfigError(
            f"engine.device = {setting!r} is not a device name",
            where="engine.device",
            hint="use auto, cpu, cuda, cuda:N or mps",
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"engine.device = {setting!r} but this torch build sees no CUDA GPU",
            where="engine.device",
            hint="check the NVIDIA driver (nvidia-smi) and that torch has CUDA support, or use auto/cpu",
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"engine.device = {setting!r} but only {torch.cuda.device_count()} CUDA device(s) exist",
            where="engine.device",
            hint="use cuda:0 .. cuda:N-1, or auto",
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"engine.device = {setting!r} but Apple MPS is not available here",
            where="engine.device",
            hint="use auto or cpu",
        )
    if device.type not in {"cpu", "cuda", "mps"}:
        raise ConfigError(
            f"engine.device = {setting!r} is not supported",
            where="engine.device",
            hint="use auto, cpu, cuda or mps",
        )
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``engine.dtype`` → a torch dtype.

    ``auto``: bf16 on Ampere or newer CUDA, fp16 on older CUDA and on MPS, fp32 on CPU.
    """
    if setting != "auto":
        if setting not in DTYPES:
            raise ConfigError(
                f"engine.dtype = {setting!r} is not supported",
                where="engine.dtype",
                hint=f"use auto or one of {', '.join(DTYPES)}",
            )
        return DTYPES[setting]
    if device.type == "cuda":
        major, _minor = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``bfloat16``, as the metadata and ``describe`` write it."""
    return str(dtype).removeprefix("torch.")


def free_device_memory(device: torch.device) -> None:
    """Collect garbage and hand the accelerator's cached blocks back (before a retry or a model swap)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a stage's timing includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def single_cpu_thread() -> Iterator[None]:
    """Run torch on one CPU thread while open (tiny tensors lose more to thread hand-offs than they gain)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
