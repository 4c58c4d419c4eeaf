"""Torch devices and dtypes: reading ``engine.device``/``engine.dtype``, freeing and syncing memory.

What the hardware can run fast is decided in one pure function, ``hardware_plan``, from the
device's facts (CUDA compute capability, memory, whether torchao is installed); ``probe_hardware``
reads those facts from torch. The ``auto`` values of ``engine.dtype``, ``engine.vram`` and
``engine.quantize`` all come from it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import importlib.util
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fooocusd.errors import ConfigError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
Capability = tuple[int, int]
BF16_FROM: Capability = (8, 0)
"""Ampere: bfloat16 tensor cores. Older CUDA GPUs get float16 (with an fp32 SDXL VAE)."""
FP8_FROM: Capability = (8, 9)
"""Ada Lovelace and Hopper: float8 tensor cores (``torch._scaled_mm``)."""
TRITON_FROM: Capability = (7, 0)
"""Volta: the oldest GPUs Triton (torch.compile's GPU code generator) builds kernels for."""
LOW_VRAM_BELOW_BYTES = 10 * 2**30
"""``engine.vram = "auto"`` streams the UNet on CUDA GPUs with less memory than this."""
TORCHAO_MIN_VERSION = (0, 18)
TORCHAO_MISSING = "fp8 weights need torchao 0.18 or newer: pip install 'fooocusd[fp8]'"
FP8_QUALITY_MEASURED = False
"""``quantize = "auto"`` turns fp8 on only once its quality on real SDXL weights has been measured."""


@dataclass(frozen=True)
class HardwarePlan:
    """What the ``auto`` settings become on one device, and whether fp8 weights can run there."""

    dtype: torch.dtype
    vram: str
    fp8_unsupported: str
    """Why fp8 cannot run here, in plain words; empty when it can."""
    quantize_auto: str
    """What ``engine.quantize = "auto"`` becomes: "off" or "fp8"."""
    compile_auto: str = "off"
    """What ``engine.compile = "auto"`` becomes: "unet" (regional) on a CUDA GPU with Triton, else "off"."""
    triton: bool = False
    """Whether Triton kernels (torch.compile's and our own) can run here: a CUDA GPU from Volta on."""

    @property
    def fp8(self) -> bool:
        return not self.fp8_unsupported


def hardware_plan(
    capability: Capability | None,
    total_memory: int | None,
    torchao_available: bool,
    *,
    device_type: str | None = None,
    triton_available: bool = True,
) -> HardwarePlan:
    """The fast defaults for a device; ``capability`` None means no CUDA GPU (``device_type`` cpu or mps).

    Regional compilation is the compile default: on an H100 it took 1024²/30 steps from 2.13 s to
    1.68 s for about 8 s of compiling (bench/results/h100-2026-11-26). The whole UNet under CUDA graphs
    is faster still (1.16 s) but compiles for about 100 s per image size, so it stays opt-in."""
    kind = device_type or ("cuda" if capability is not None else "cpu")
    if kind == "cuda" and capability is not None:
        dtype = torch.bfloat16 if capability >= BF16_FROM else torch.float16
    elif kind == "mps":
        dtype = torch.float16
    else:
        dtype = torch.float32
    vram = auto_vram(kind, total_memory)
    fp8_unsupported = _fp8_unsupported(kind, capability, torchao_available)
    quantize_auto = "fp8" if not fp8_unsupported and FP8_QUALITY_MEASURED else "off"
    compiles = kind == "cuda" and capability is not None and capability >= TRITON_FROM and triton_available
    return HardwarePlan(
        dtype=dtype,
        vram=vram,
        fp8_unsupported=fp8_unsupported,
        quantize_auto=quantize_auto,
        compile_auto="unet" if compiles and vram == "high" else "off",
        triton=compiles,
    )


def auto_vram(device_type: str, total_memory: int | None) -> str:
    """``engine.vram = "auto"``: "low" on a CUDA GPU with less than 10 GiB, else "high"."""
    small = total_memory is not None and total_memory < LOW_VRAM_BELOW_BYTES
    return "low" if device_type == "cuda" and small else "high"


def _fp8_unsupported(kind: str, capability: Capability | None, torchao_available: bool) -> str:
    if kind != "cuda" or capability is None:
        return f"fp8 weights need an NVIDIA GPU (Ada or Hopper); this device is {kind}"
    if capability < FP8_FROM:
        major, minor = capability
        return (
            f"fp8 weights need CUDA compute capability 8.9 or newer (RTX 40xx, L4, L40, H100); "
            f"this GPU has {major}.{minor}"
        )
    if not torchao_available:
        return TORCHAO_MISSING
    return ""


@dataclass(frozen=True)
class HardwareFacts:
    """What ``hardware_plan`` is decided from, as read from torch for one device."""

    device_type: str
    capability: Capability | None
    total_memory: int | None
    torchao_available: bool
    triton_available: bool = True

    def plan(self) -> HardwarePlan:
        return hardware_plan(
            self.capability,
            self.total_memory,
            self.torchao_available,
            device_type=self.device_type,
            triton_available=self.triton_available,
        )


def probe_hardware(device: torch.device) -> HardwareFacts:
    """The facts of ``device``; imports nothing heavy (torchao is looked up, not imported)."""
    if device.type != "cuda":
        return HardwareFacts(device.type, None, None, torchao_available())
    properties = torch.cuda.get_device_properties(device)
    return HardwareFacts(
        "cuda",
        (properties.major, properties.minor),
        properties.total_memory,
        torchao_available(),
        triton_available=importlib.util.find_spec("triton") is not None,
    )


def device_total_memory(device: torch.device) -> int | None:
    """The accelerator's total memory in bytes; None for the CPU and other devices."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def torchao_available() -> bool:
    """Whether torchao (the ``fp8`` extra) is installed in a version fooocusd's fp8 path was written for."""
    if importlib.util.find_spec("torchao") is None:
        return False
    try:
        version = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        return False
    return _version_tuple(version) >= TORCHAO_MIN_VERSION


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"0.18.0+cu126"`` → ``(0, 18)``; an unreadable version → ``()`` (treated as too old)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else ()


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

    ``auto`` (``hardware_plan``): bf16 on Ampere or newer CUDA, fp16 on older CUDA and on MPS, fp32 on CPU.
    """
    if setting != "auto":
        if setting not in DTYPES:
            raise ConfigError(
                f"engine.dtype = {setting!r} is not supported",
                where="engine.dtype",
                hint=f"use auto or one of {', '.join(DTYPES)}",
            )
        return DTYPES[setting]
    capability = tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
    return hardware_plan(capability, None, False, device_type=device.type).dtype  # type: ignore[arg-type]


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


def context_lost(device: torch.device) -> str:
    """Why the device can run nothing more in this process (a sticky CUDA error fails every later
    call); "" when it can."""
    if device.type != "cuda":
        return ""
    try:
        torch.cuda.synchronize(device)
    except Exception as exc:  # any failure here means every later call would fail the same way
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return ""


def gpu_memory(device: torch.device) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device, what every program on it leaves; None elsewhere."""
    if device.type != "cuda":
        return None
    try:
        return torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):
        return None


def reserved_memory(device: torch.device) -> int | None:
    """Bytes the CUDA caching allocator holds on ``device``; None on other devices."""
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else None


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
