"""Speed and memory options for the resident SDXL pipeline, applied once per loaded model.

``SDXLEngine._prepare`` hands every freshly loaded pipeline to ``Accelerator.apply``, which

0. picks the attention backend (``engine.attention``; ``auto`` measures the candidates on a CUDA
   GPU, ``attention_choice.py``);
1. places it: everything on the device (``vram = "high"``), or the low-VRAM stages of
   ``low_vram.py`` (``"low"``; ``"auto"`` picks low on CUDA GPUs with less than 10 GiB);
2. sets the VAE's precision: a bf16 VAE runs as it is, an fp16 SDXL VAE (whose config asks for
   ``force_upcast``: it overflows in fp16) stays in fp32 so that we never cast it back and forth
   per decode as the stock pipeline does (``vae_upcast``);
3. on CUDA, stores the UNet and VAE ``channels_last`` and fuses the UNet's attention projections
   (one Q·K·V matmul for self-attention, one K·V for cross-attention). The fused weight is the only
   copy: ``to_q``/``to_k``/``to_v`` become views into it, so fusing costs no memory. peft injects
   LoRA layers into ``to_q``/``to_k``/``to_v``, which the fused processor bypasses, so the fused
   processors are swapped back out the first time a LoRA is loaded on the pipeline. With
   ``keep_channels_last = "on"`` GroupNorm and the transformers' outputs stay in that layout
   instead of copying to NCHW and back (``keep_channels_last.py``), and with
   ``fuse_resnet_norms`` each resnet block's GroupNorm, time shift and SiLU run as one pass, its
   convolutions' biases added by the passes after them (``fused_resnet.py``; on a GPU our Triton
   kernels, ``triton_group_norm.py`` and ``triton_residual.py``, checked at load, which then run
   the transformers' GroupNorms too);
4. with ``quantize = "fp8"`` on a CUDA GPU of compute capability 8.9+ with torchao installed, gives
   the UNet's transformer Linear layers fp8 weights and activations (``quantization.py``; LoRAs run
   beside them in bfloat16). fp8 replaces fused QKV (the LoRAs must find separate projections) and is
   not combined with low-VRAM mode. Anywhere else it falls back to no quantisation, with a plan note
   and one warning, never a failed job. ``quantize = "auto"`` is off until fp8's quality on real SDXL
   weights has been measured (``devices.FP8_QUALITY_MEASURED``);
5. compiles the UNet's repeated transformer blocks (``compile = "unet"``, regional compilation) or
   the whole UNet (``"unet_full"``) with ``torch.compile``; ``"auto"`` (the default) is regional on
   a CUDA GPU with Triton in high-VRAM mode and off elsewhere (``devices.hardware_plan``). Shapes
   are static per aspect-ratio bucket (automatic dynamic shapes off, recompile limits raised so that
   all of Fooocus's 26 buckets at batch 1 and 2 stay compiled), unless ``compile_dynamic``. Compiled
   artefacts are cached under the configured cache folder (inductor's FX-graph and autograd caches,
   plus torch's portable "mega cache" loaded at start and saved at exit), so a restart does not
   compile again. A failed compilation falls back to eager with a warning instead of failing jobs.

Steps 3 and 5 change numerics within float rounding, step 4 within fp8 rounding; steps 3 and 4 are
skipped on the CPU (where they do not pay off) unless ``layout_on_cpu``/``quantize_on_cpu``, which
tests and the CPU benchmark use.

Which dtype, VRAM mode and quantisation the hardware supports is decided by ``devices.hardware_plan``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from torch import nn

from fooocusd.engine import flash4_attention, triton_bilateral
from fooocusd.engine.attention_choice import AttentionChoice, choose_attention, enable_attention
from fooocusd.engine.attention_memory import MEMORY_NAME
from fooocusd.engine.devices import (
    TORCHAO_MISSING,
    HardwareFacts,
    auto_vram,
    device_total_memory,
    probe_hardware,
)
from fooocusd.engine.encoder_graphs import EncoderGraphs
from fooocusd.engine.fused_resnet import fuse_resnet_norms, triton_kernels_fail
from fooocusd.engine.graph_capture import CudaGraphBackend, GraphBackend
from fooocusd.engine.keep_channels_last import KeptLayout, keep_channels_last
from fooocusd.engine.low_vram import StageOffload, install_low_vram, small_decode_tiles
from fooocusd.engine.quantization import fp8_layer_count, quantize_unet_fp8
from fooocusd.engine.subpixel_upsample import install_subpixel_upsampling
from fooocusd.engine.unet_graphs import UNetGraphs
from fooocusd.step_timer import StepTimer

if TYPE_CHECKING:
    from fooocusd.settings import EngineSettings

SDPA_BACKENDS = ("sdpa", "sdpa_cudnn", "sdpa_flash4")
"""Attention backends that run through PyTorch's SDPA, as diffusers' fused-QKV processor does
(cuDNN first is only PyTorch's kernel order, which that processor follows too)."""
RECOMPILE_LIMIT = 256
"""Graphs per code object: 26 aspect buckets × batch 1/2 × the UNet's two block widths, with room."""
ACCUMULATED_RECOMPILE_LIMIT = 8192
COMPILE_CACHE_FOLDER = "torch_compile"
MEGA_CACHE_NAME = "mega_cache.bin"
VRAM_MODES = ("auto", "high", "low")
COMPILE_TARGETS = ("auto", "off", "unet", "unet_full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
VAE_UPCAST = ("auto", "always", "never")
QUANTIZE_MODES = ("off", "fp8", "auto")
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
OVERLAP_DECODE_FROM_BYTES = 20 * 2**30
CUDA_GRAPHS_FROM_BYTES = 16 * 2**30
"""``cuda_graphs = "auto"`` from here: the graphs' memory pool keeps the largest captured shape's
activations reserved (0.7 GiB more than without graphs for a batch of 4 at 1024² on an H100)."""


@dataclass(frozen=True)
class AccelerationOptions:
    """What the configuration asks for (``[engine]`` keys of the same names)."""

    vram: str = "auto"
    compile: str = "auto"
    compile_mode: str = "default"
    compile_dynamic: bool = False
    channels_last: bool = True
    fuse_qkv: bool = True
    vae_upcast: str = "auto"
    cache_dir: Path | None = None
    """Compiled artefacts go to ``<cache_dir>/torch_compile``; None leaves torch's defaults."""
    layout_on_cpu: bool = False
    """Apply channels_last and fused QKV on the CPU too (tests, the CPU benchmark)."""
    quantize: str = "off"
    quantize_on_cpu: bool = False
    """Apply fp8 on the CPU too, where it is slow: to check its numerics (tests, the CPU benchmark)."""
    cuda_graphs: str = "auto"
    overlap_decode: str = "auto"
    keep_channels_last: str = "on"
    fuse_resnet_norms: str = "auto"
    subpixel_upsample: str = "auto"

    @classmethod
    def from_settings(cls, engine: EngineSettings, cache_dir: Path | None) -> AccelerationOptions:
        return cls(
            vram=engine.vram,
            compile=engine.compile,
            compile_mode=engine.compile_mode,
            compile_dynamic=engine.compile_dynamic,
            channels_last=engine.channels_last,
            fuse_qkv=engine.fuse_qkv,
            vae_upcast=engine.vae_upcast,
            cache_dir=cache_dir,
            quantize=engine.quantize,
            cuda_graphs=engine.cuda_graphs,
            overlap_decode=engine.overlap_decode,
            keep_channels_last=engine.keep_channels_last,
            fuse_resnet_norms=engine.fuse_resnet_norms,
            subpixel_upsample=engine.subpixel_upsample,
        )


@dataclass
class AccelerationPlan:
    """What is actually applied on this device, and why anything asked for is not."""

    vram: str
    vae_dtype: torch.dtype
    channels_last: bool
    fuse_qkv: bool
    compile: str
    compile_mode: str
    compile_dynamic: bool
    quantize: str = "off"
    """"fp8" or "off": what the UNet's transformer Linear layers run in."""
    quantized_layers: int = 0
    cuda_graphs: bool = False
    """Whether the base UNet's calls replay captured CUDA graphs (``unet_graphs.py``)."""
    overlap_decode: bool = False
    """Whether a text-to-image decode may run beside the next render (``decode_lane.py``)."""
    keep_channels_last: bool = False
    """GroupNorm and the transformers' outputs kept channels_last (``keep_channels_last.py``)."""
    kept_layout: KeptLayout = field(default_factory=KeptLayout)
    fuse_resnet_norms: bool = False
    """Resnet blocks' GroupNorm + SiLU as one pass (``fused_resnet.py``)."""
    fused_norm_kernel: str = ""
    """How that pass runs (``fused_resnet.KERNELS``: "triton", "compiled" or "eager"); "" when off."""
    fused_resnets: int = 0
    subpixel_upsample: bool = False
    """Upsampling + 3×3 convolution as one convolution of phase kernels (``subpixel_upsample.py``)."""
    subpixel_upsamplers: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def folds_loras(self) -> bool:
        """Whether LoRAs may be folded into the UNet's weights: not into fp8 or streamed weights."""
        return self.vram == "high" and self.quantize == "off"

    def record(self) -> dict[str, Any]:
        return {
            "vram": self.vram,
            "vae_dtype": str(self.vae_dtype).removeprefix("torch."),
            "channels_last": self.channels_last,
            "fuse_qkv": self.fuse_qkv,
            "compile": self.compile,
            "compile_mode": self.compile_mode if self.compile != "off" else "",
            "compile_dynamic": self.compile_dynamic if self.compile != "off" else False,
            "quantize": self.quantize,
            "quantized_layers": self.quantized_layers,
            "cuda_graphs": self.cuda_graphs,
            "overlap_decode": self.overlap_decode,
            "keep_channels_last": self.keep_channels_last,
            "kept_channels_last": {
                "group_norms": self.kept_layout.group_norms,
                "transformer_outputs": self.kept_layout.transformer_outputs,
            },
            "fuse_resnet_norms": self.fuse_resnet_norms,
            "fused_norm_kernel": self.fused_norm_kernel,
            "fused_resnets": self.fused_resnets,
            "subpixel_upsample": self.subpixel_upsample,
            "subpixel_upsamplers": self.subpixel_upsamplers,
            "notes": list(self.notes),
        }


def resolve_vram(setting: str, device: torch.device, total_memory: int | None = None) -> str:
    """``vram`` → "high" or "low". ``auto`` is low on a CUDA GPU with less than 10 GiB."""
    if setting in ("high", "low"):
        return setting
    if device.type != "cuda":
        return "high"
    if total_memory is None:
        total_memory = torch.cuda.get_device_properties(device).total_memory
    return auto_vram(device.type, total_memory)


def vae_dtype_for(setting: str, dtype: torch.dtype, *, force_upcast: bool) -> torch.dtype:
    """The VAE's dtype: ``auto`` keeps an fp16 pipeline's force_upcast VAE in fp32, else the pipeline's."""
    if setting == "always":
        return torch.float32
    if setting == "never":
        return dtype
    return torch.float32 if dtype == torch.float16 and force_upcast else dtype


def plan_acceleration(
    options: AccelerationOptions,
    device: torch.device,
    dtype: torch.dtype,
    *,
    attention: str = "sdpa",
    vae_force_upcast: bool = False,
    total_memory: int | None = None,
    hardware: HardwareFacts | None = None,
) -> AccelerationPlan:
    """What to apply on ``device``; ``hardware`` (read from torch when None) decides what it supports."""
    if hardware is not None and total_memory is None:
        total_memory = hardware.total_memory
    vram = resolve_vram(options.vram, device, total_memory)
    layout_pays = device.type == "cuda" or options.layout_on_cpu
    plan = AccelerationPlan(
        vram=vram,
        vae_dtype=vae_dtype_for(options.vae_upcast, dtype, force_upcast=vae_force_upcast),
        channels_last=options.channels_last and layout_pays,
        fuse_qkv=options.fuse_qkv and layout_pays,
        compile=options.compile,
        compile_mode=options.compile_mode,
        compile_dynamic=options.compile_dynamic,
    )
    if plan.compile == "auto":
        plan.compile = (hardware or probe_hardware(device)).plan().compile_auto if vram == "high" else "off"
    if plan.fuse_qkv and attention not in SDPA_BACKENDS:
        plan.fuse_qkv = False
        plan.notes.append(f"fuse_qkv off: the fused processor is PyTorch SDPA, attention is {attention}")
    if plan.fuse_qkv and vram == "low":
        plan.fuse_qkv = False
        plan.notes.append("fuse_qkv off: low-VRAM mode streams weights, fusing would not pay")
    if plan.compile != "off" and vram == "low":
        plan.compile = "off"
        plan.notes.append("compile off: not combined with low-VRAM mode's layer streaming")
    if plan.compile == "unet" and plan.compile_mode in COMPILE_MODES_WITH_GRAPHS:
        plan.notes.append(regional_graphs_note(plan.compile_mode))
        plan.compile_mode = "default"
    plan.quantize, quantize_note = resolve_quantize(options, device, dtype, vram, hardware)
    if quantize_note:
        plan.notes.append(quantize_note)
    if plan.quantize == "fp8" and plan.fuse_qkv:
        plan.fuse_qkv = False
        plan.notes.append("fuse_qkv off: fp8 quantises the separate projections, where LoRAs attach")
    if plan.quantize == "fp8" and plan.compile == "off":
        plan.notes.append(FP8_EAGER_NOTE)
    if options.keep_channels_last == "on":
        plan.keep_channels_last = plan.channels_last
        if not options.channels_last:  # (elsewhere than a GPU, the channels_last note says why)
            plan.notes.append("keep_channels_last off: channels_last is off")
    plan.fused_norm_kernel, fuse_note = resolve_fuse_resnet_norms(
        options.fuse_resnet_norms, plan, triton=lambda: triton_runs(device, hardware)
    )
    plan.fuse_resnet_norms = bool(plan.fused_norm_kernel)
    if fuse_note:
        plan.notes.append(fuse_note)
    plan.subpixel_upsample, subpixel_note = resolve_subpixel_upsample(options.subpixel_upsample, plan)
    if subpixel_note:
        plan.notes.append(subpixel_note)
    plan.cuda_graphs, graphs_note = resolve_cuda_graphs(options.cuda_graphs, device, plan, total_memory)
    if graphs_note:
        plan.notes.append(graphs_note)
    plan.overlap_decode, overlap_note = resolve_overlap_decode(
        options.overlap_decode, device, vram, total_memory
    )
    if overlap_note:
        plan.notes.append(overlap_note)
    return plan


def resolve_overlap_decode(
    setting: str, device: torch.device, vram: str, total_memory: int | None = None
) -> tuple[bool, str]:
    """``overlap_decode`` → (on or off, a note saying why "on" is not used, or ""). ``auto``: on for
    a CUDA GPU with ``OVERLAP_DECODE_FROM_BYTES`` or more (the decode's working memory comes on top
    of the next render's), off on the CPU (the two would only share its cores)."""
    if setting == "off":
        return False, ""
    if vram == "low":
        note = "overlap_decode off: low-VRAM mode moves the VAE on and off the GPU around each decode"
        return False, note if setting == "on" else ""
    if setting == "on":
        return True, ""
    if device.type != "cuda":
        return False, ""
    if total_memory is None:
        with contextlib.suppress(RuntimeError, AssertionError):  # no driver: memory unknown, off
            total_memory = device_total_memory(device)
    return total_memory is not None and total_memory >= OVERLAP_DECODE_FROM_BYTES, ""


def triton_runs(device: torch.device, hardware: HardwareFacts | None = None) -> bool:
    """Whether Triton kernels run on ``device`` (``HardwarePlan.triton``); False where it cannot be read."""
    if device.type != "cuda":
        return False
    with contextlib.suppress(RuntimeError, AssertionError):  # no driver
        return (hardware or probe_hardware(device)).plan().triton
    return False


def resolve_fuse_resnet_norms(
    setting: str, plan: AccelerationPlan, *, triton: Callable[[], bool]
) -> tuple[str, str]:
    """``fuse_resnet_norms`` → (the kernel that runs the fused pass, ``fused_resnet.KERNELS``, or ""
    for off; a note saying why "on" is not used as asked, or ""). The pass reads channels_last
    activations, so it needs ``keep_channels_last``, and the norms' weights directly, so not in
    low-VRAM mode, whose hooks bring them in only when a norm is called. ``auto`` is our Triton
    kernels wherever Triton runs (a CUDA GPU) and off elsewhere; "on" without Triton is compiled
    where the UNet is, else eager (no faster). Under a whole-UNet compile it is the eager maths,
    which that compile fuses."""
    if setting == "off":
        return "", ""
    if not plan.keep_channels_last:
        note = "fuse_resnet_norms off: activations are not kept channels_last"
        return "", note if setting == "on" else ""
    if plan.vram == "low":
        note = "fuse_resnet_norms off: low-VRAM mode streams the norms' weights in at each call"
        return "", note if setting == "on" else ""
    if plan.compile == "unet_full":
        return "eager", ""
    if triton():
        return "triton", ""
    if setting == "auto":
        return "", ""
    if plan.compile != "off":
        return "compiled", ""
    return "eager", "fuse_resnet_norms runs eagerly: no Triton here and compile is off"


def resolve_subpixel_upsample(setting: str, plan: AccelerationPlan) -> tuple[bool, str]:
    """``subpixel_upsample`` → (on or off, a note saying why "on" is not used, or ""). ``auto`` is on
    where the model runs channels_last (NVIDIA GPUs), with the other layout passes. Not in low-VRAM
    mode, whose hooks bring a convolution's weights in only when the module is called."""
    if setting == "off":
        return False, ""
    if plan.vram == "low":
        note = "subpixel_upsample off: low-VRAM mode streams the convolutions' weights in at each call"
        return False, note if setting == "on" else ""
    return setting == "on" or plan.channels_last, ""


def resolve_cuda_graphs(
    setting: str, device: torch.device, plan: AccelerationPlan, total_memory: int | None = None
) -> tuple[bool, str]:
    """``cuda_graphs`` → (on or off, a note saying why "on" is not used, or ""). ``auto`` is "on"
    wherever "on" would be used on a GPU with ``CUDA_GRAPHS_FROM_BYTES`` or more, and off without a
    note elsewhere."""
    if setting == "off":
        return False, ""
    refusal = ""
    if device.type != "cuda":
        refusal = f"cuda_graphs off: CUDA graphs need an NVIDIA GPU, the device is {device.type}"
    elif plan.vram == "low":
        refusal = "cuda_graphs off: not combined with low-VRAM mode's layer streaming"
    elif plan.compile != "off" and plan.compile_mode in COMPILE_MODES_WITH_GRAPHS:
        refusal = f"cuda_graphs off: compile_mode {plan.compile_mode} records its own CUDA graphs"
    if refusal:
        return False, refusal if setting == "on" else ""
    if setting == "auto":
        if total_memory is None:
            with contextlib.suppress(RuntimeError, AssertionError):  # no driver: memory unknown, off
                total_memory = device_total_memory(device)
        return total_memory is not None and total_memory >= CUDA_GRAPHS_FROM_BYTES, ""
    return True, ""


def regional_graphs_note(mode: str) -> str:
    return (
        f"compile_mode {mode} → default: regional compilation runs one compiled block many times per "
        "step, and each run's CUDA graph overwrites the previous block's output (it failed so on an "
        f'H100); compile = "unet_full" keeps {mode}, cuda_graphs = "on" adds CUDA graphs to "unet"'
    )


FP8_EAGER_NOTE = (
    "fp8 without compile: each layer scales its input on the fly, which measured 6.7x slower than "
    'bfloat16 on an H100 (it saves about 2 GiB); fp8 is meant for compile = "unet" or "unet_full"'
)


def resolve_quantize(
    options: AccelerationOptions,
    device: torch.device,
    dtype: torch.dtype,
    vram: str,
    hardware: HardwareFacts | None = None,
) -> tuple[str, str]:
    """``quantize`` → ("fp8" or "off", a note saying why fp8 was asked for and is not used, or "")."""
    if options.quantize == "off":
        return "off", ""
    facts = hardware or probe_hardware(device)
    plan = facts.plan()
    if options.quantize == "auto" and not plan.fp8:
        return "off", ""
    if options.quantize == "auto" and plan.quantize_auto != "fp8":
        return "off", (
            "quantize auto = off: fp8's quality on real SDXL weights is not measured yet; "
            'quantize = "fp8" turns it on'
        )
    unsupported = plan.fp8_unsupported
    if device.type == "cpu" and options.quantize_on_cpu:
        unsupported = "" if facts.torchao_available else TORCHAO_MISSING
    if unsupported:
        return "off", f"quantize off: {unsupported}"
    if dtype != torch.bfloat16:
        name = str(dtype).removeprefix("torch.")
        return "off", f'quantize off: fp8 weights need engine.dtype = "bfloat16" (or auto), not {name}'
    if vram == "low":
        return "off", "quantize off: not combined with low-VRAM mode's layer streaming"
    return "fp8", ""


class Accelerator:
    """Applies one ``AccelerationPlan`` to each pipeline the engine loads."""

    def __init__(
        self,
        options: AccelerationOptions,
        device: torch.device,
        dtype: torch.dtype,
        *,
        attention: str = "auto",
    ) -> None:
        self.options = options
        self.device = device
        self.dtype = dtype
        self.attention = attention
        """``engine.attention``: a backend, or ``auto`` (measured per model, ``attention_choice.py``)."""
        self.attention_choice: AttentionChoice | None = None
        self.plan: AccelerationPlan | None = None
        self.offload: StageOffload | None = None
        self.graphs: UNetGraphs | None = None
        self.encoder_graphs: EncoderGraphs | None = None
        self.graph_backend: Callable[[torch.device], GraphBackend] = CudaGraphBackend
        self.before_capture: Callable[[], None] = lambda: None
        """Handed to ``UNetGraphs`` and ``EncoderGraphs``: runs before each CUDA graph capture."""
        self.load_steps: dict[str, float] = {}
        """Seconds per step of the last ``apply`` (part of the model load the daemon reports)."""

    def apply(self, pipeline: Any) -> AccelerationPlan:
        timer = StepTimer()
        if self.device.type == "cuda" and self.options.cache_dir is not None:
            configure_triton_cache(self.options.cache_dir)  # our Triton kernels compile into it
            flash4_attention.configure_cache(self.options.cache_dir)  # (before its package is imported)
        graphed = plan_acceleration(self.options, self.device, self.dtype).cuda_graphs  # (before attention)
        memory = self.options.cache_dir / MEMORY_NAME if self.options.cache_dir is not None else None
        self.attention_choice = choose_attention(
            self.attention, pipeline.unet, self.device, self.dtype, graphed=graphed, memory=memory
        )
        enable_attention(pipeline, self.attention_choice.backend, self.device)
        timer.reached("attention chosen")
        force_upcast = bool(getattr(pipeline.vae.config, "force_upcast", False))
        plan = plan_acceleration(
            self.options,
            self.device,
            self.dtype,
            attention=self.attention_choice.backend,
            vae_force_upcast=force_upcast,
        )
        if plan.vram == "high":
            pipeline.to(self.device)
        if pipeline.unet.dtype != self.dtype:  # only tiny-random is built in fp32 regardless
            pipeline.to(dtype=self.dtype)
        if pipeline.vae.dtype != plan.vae_dtype:
            pipeline.vae.to(dtype=plan.vae_dtype)
        if plan.channels_last:
            pipeline.unet.to(memory_format=torch.channels_last)
            pipeline.vae.to(memory_format=torch.channels_last)
        timer.reached("moved to the device")
        if plan.fused_norm_kernel == "triton":
            failure = triton_kernels_fail(self.device, self.dtype)
            if failure:
                plan.fused_norm_kernel, plan.fuse_resnet_norms = "", False
                plan.notes.append(f"fuse_resnet_norms off: its Triton kernels failed a check ({failure})")
        if failure := triton_bilateral.check(self.device):
            plan.notes.append(f"sharpness on PyTorch operators: its Triton kernel failed a check ({failure})")
        timer.reached("kernels checked")
        if plan.keep_channels_last:
            # the other GroupNorms (the transformers') run on the same kernels, checked above
            norm = "triton" if plan.fused_norm_kernel == "triton" else "eager"
            plan.kept_layout = keep_channels_last(pipeline.unet, norm=norm) + keep_channels_last(
                pipeline.vae, norm=norm
            )
        if plan.fuse_resnet_norms:
            kernel, models = plan.fused_norm_kernel, (pipeline.unet, pipeline.vae)
            plan.fused_resnets = sum(fuse_resnet_norms(m, kernel=kernel) for m in models)
        if plan.subpixel_upsample:
            models = (pipeline.unet, pipeline.vae)
            plan.subpixel_upsamplers = sum(install_subpixel_upsampling(m) for m in models)
        if plan.fuse_qkv:
            fuse_qkv(pipeline.unet)
            unfuse_before_loras(pipeline)
        if plan.quantize == "fp8":
            apply_fp8(pipeline.unet, plan)
        if self.options.quantize == "fp8" and plan.quantize == "off":
            warn_once(plan.notes)
        self.offload = install_low_vram(pipeline, self.device) if plan.vram == "low" else None
        timer.reached("layers rearranged")
        if plan.compile != "off":
            plan.compile = compile_unet(
                pipeline.unet,
                whole=plan.compile == "unet_full",
                mode=plan.compile_mode,
                dynamic=plan.compile_dynamic,
                cache_dir=self.options.cache_dir,
            )
        self.drop_graphs()
        if plan.cuda_graphs:
            backend = self.graph_backend(self.device)
            self.graphs = UNetGraphs(pipeline.unet, backend, before_capture=self.before_capture)
            self.encoder_graphs = EncoderGraphs(backend, before_capture=self.before_capture)
        timer.reached("compile set up")
        self.load_steps = timer.steps
        self.plan = plan
        return plan

    def drop_graphs(self) -> None:
        """The resident pipeline is going: its graphs (and the memory they hold) go with it."""
        self.graphs = None
        self.encoder_graphs = None

    def decode_context(self, vae: Any) -> contextlib.AbstractContextManager[None]:
        """Around a VAE decode: small tiles in low-VRAM mode, nothing otherwise."""
        if self.plan is not None and self.plan.vram == "low":
            return small_decode_tiles(vae)
        return contextlib.nullcontext()

    def record(self) -> dict[str, Any]:
        if self.plan is None:
            return {}
        graphs = self.graphs.record() if self.graphs is not None else {}
        encoder_graphs = self.encoder_graphs.record() if self.encoder_graphs is not None else {}
        attention = self.attention_choice.record() if self.attention_choice is not None else {}
        return {**self.plan.record(), **attention, **graphs, **encoder_graphs}


# -- fp8 -------------------------------------------------------------------------------------------

_warned: set[str] = set()


def apply_fp8(unet: Any, plan: AccelerationPlan) -> None:
    """fp8 transformer Linears on ``unet``; a failure leaves the UNet usable and says so in the plan."""
    try:
        result = quantize_unet_fp8(unet)
    except (ImportError, RuntimeError, AssertionError, ValueError) as exc:
        plan.quantized_layers = fp8_layer_count(unet)
        plan.quantize = "fp8" if plan.quantized_layers else "off"
        plan.notes.append(f"quantize failed, bfloat16 kept: {type(exc).__name__}: {exc}"[:300])
        return
    plan.quantized_layers = result.layers
    logger.info(
        "fp8 weights on {} UNet layers ({:.2f} GiB saved; {} left in bfloat16)",
        result.layers,
        result.bytes_saved / 2**30,
        len(result.skipped),
    )


def warn_once(notes: list[str]) -> None:
    """Log each quantisation fallback once per process (every model load would repeat it)."""
    for note in notes:
        if note.startswith("quantize") and note not in _warned:
            _warned.add(note)
            logger.warning('engine.quantize = "fp8" is not used: {}', note.removeprefix("quantize off: "))


# -- fused QKV -----------------------------------------------------------------------------------


def fuse_qkv(unet: Any) -> None:
    """diffusers' fused projections, with the separate Q/K/V weights turned into views of the fused one."""
    unet.fuse_qkv_projections()
    for module in unet.modules():
        if getattr(module, "fused_projections", False):
            _share_fused_storage(module)


def _share_fused_storage(attention: Any) -> None:
    if hasattr(attention, "to_qkv"):
        fused, parts = attention.to_qkv, (attention.to_q, attention.to_k, attention.to_v)
    elif hasattr(attention, "to_kv"):
        fused, parts = attention.to_kv, (attention.to_k, attention.to_v)
    else:
        return
    sizes = [part.out_features for part in parts]
    for part, weight in zip(parts, fused.weight.detach().split(sizes), strict=True):
        part.weight = nn.Parameter(weight, requires_grad=False)
    if fused.bias is not None:
        for part, bias in zip(parts, fused.bias.detach().split(sizes), strict=True):
            part.bias = nn.Parameter(bias, requires_grad=False)


def qkv_fused(unet: Any) -> bool:
    """Whether every attention layer of ``unet`` runs the fused processor."""
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    processors = unet.attn_processors.values()
    return bool(processors) and all(isinstance(proc, FusedAttnProcessor2_0) for proc in processors)


def unfuse_qkv(unet: Any) -> bool:
    """Back to the separate projections, unless something else (an IP-Adapter) replaced the processors."""
    if not qkv_fused(unet):
        return False
    unet.unfuse_qkv_projections()
    return True


def unfuse_before_loras(pipeline: Any) -> None:
    """Make ``pipeline.load_lora_weights`` unfuse the UNet first: LoRA layers sit on to_q/to_k/to_v."""
    load = pipeline.load_lora_weights
    if getattr(load, "unfuses_qkv", False):
        return

    def load_lora_weights(*args: Any, **kwargs: Any) -> Any:
        if unfuse_qkv(pipeline.unet):
            logger.info("fused attention projections turned off for this model: a LoRA was loaded")
        return load(*args, **kwargs)

    load_lora_weights.unfuses_qkv = True  # type: ignore[attr-defined]
    pipeline.load_lora_weights = load_lora_weights


# -- torch.compile ---------------------------------------------------------------------------------


def compile_unet(unet: Any, *, whole: bool, mode: str, dynamic: bool, cache_dir: Path | None) -> str:
    """Compile ``unet`` in place; returns what was compiled ("unet_blocks" or "unet_full")."""
    if cache_dir is not None:
        load_compile_artifacts(configure_compile_cache(cache_dir))
    configure_dynamo(dynamic=dynamic)
    kwargs: dict[str, Any] = {"mode": mode, "dynamic": dynamic}
    if not whole and getattr(unet, "_repeated_blocks", None) and hasattr(unet, "compile_repeated_blocks"):
        unet.compile_repeated_blocks(**kwargs)
        return "unet_blocks"
    unet.compile(**kwargs)
    return "unet_full"


def configure_dynamo(*, dynamic: bool) -> None:
    """Recompile limits that hold every aspect bucket; static shapes unless ``dynamic``."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, ACCUMULATED_RECOMPILE_LIMIT
    )
    # Static shapes: one specialised graph per bucket. Otherwise the second size seen turns every
    # dimension dynamic (slower kernels), and CUDA graphs still record one graph per size.
    dynamo_config.automatic_dynamic_shapes = dynamic
    dynamo_config.suppress_errors = True  # a graph that fails to compile runs eagerly, with a warning
    if dynamic:
        import torch.fx.experimental._config as fx_config

        fx_config.use_duck_shape = False  # width and height may be equal without being the same symbol


def configure_compile_cache(cache_dir: Path) -> Path:
    """Inductor's on-disk caches (FX graphs, autograd, Triton kernels) go to ``<cache_dir>/torch_compile``."""
    folder = cache_dir / COMPILE_CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autograd_cache"):
        inductor_config.autograd_cache = True
    _save_at_exit(folder)
    return folder


TRITON_CACHE_FOLDER = "triton"


def configure_triton_cache(cache_dir: Path) -> Path:
    """Our own Triton kernels (``triton_group_norm.py``) are kept in ``<cache_dir>/triton`` unless
    ``TRITON_CACHE_DIR`` says otherwise: Triton's default, ``~/.triton/cache``, is read-only under
    the system service (``ProtectHome=read-only``), and a start would compile them again."""
    folder = Path(os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / TRITON_CACHE_FOLDER)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_compile_artifacts(folder: Path) -> bool:
    """Preload torch's portable compile cache saved by an earlier run; False when there is none."""
    path = folder / MEGA_CACHE_NAME
    loader = getattr(torch.compiler, "load_cache_artifacts", None)
    if loader is None or not path.is_file():
        return False
    try:
        loader(path.read_bytes())
    except Exception as exc:  # a stale or foreign cache only costs a recompilation
        logger.warning("ignoring the compile cache {}: {}: {}", path, type(exc).__name__, exc)
        return False
    return True


def save_compile_artifacts(folder: Path) -> bool:
    """Write torch's portable compile cache (atomically); False when there is nothing to save."""
    saver = getattr(torch.compiler, "save_cache_artifacts", None)
    if saver is None:
        return False
    try:
        saved = saver()
    except Exception as exc:
        logger.warning("could not save the compile cache: {}: {}", type(exc).__name__, exc)
        return False
    if not saved or not saved[0]:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{MEGA_CACHE_NAME}.{os.getpid()}.partial"
    partial.write_bytes(saved[0])
    os.replace(partial, folder / MEGA_CACHE_NAME)
    return True


_registered_exit_saves: set[Path] = set()


def _save_at_exit(folder: Path) -> None:
    if folder not in _registered_exit_saves:
        _registered_exit_saves.add(folder)
        atexit.register(save_compile_artifacts, folder)
