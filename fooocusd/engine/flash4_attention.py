"""FlashAttention 4 (the optional ``flash-attn-4`` package's CuTe kernels) as PyTorch's flash kernel.

PyTorch's ``scaled_dot_product_attention`` runs FlashAttention 2 on a GPU, which uses about half
of a Hopper GPU's tensor-core rate (no wgmma, no bulk tensor copies); attention was 17.5 % of an
SDXL render on an H100 (docs/benchmarks.md, tenth session). The ``flash-attn-4`` package's Hopper
and Blackwell kernels compute the same softmax(QKᵀ·scale)·V with those instructions.

``activate()`` registers our forward for ``aten::_scaled_dot_product_flash_attention`` on the CUDA
dispatch key: every SDPA call PyTorch routes to its flash kernel then runs FlashAttention 4 (the
UNet's fused and separate projections, IP-Adapter processors, a compiled region's call, a CUDA
graph's capture) with no attention processor swapped. ``deactivate()`` removes the registration.
A call FlashAttention 4 refuses (or would compute differently: a causal mask over unequal query
and key lengths, which PyTorch aligns top-left) runs PyTorch's memory-efficient kernel instead
(the same maths), logged once. ``engine.attention = "sdpa_flash4"`` asks for it; ``auto`` times
it beside the others (``attention_choice.py``) where ``unavailable`` is empty.

Its kernels are compiled on their first call for each dtype, head width and mask kind (seconds
each); ``configure_cache`` keeps them on disk under the daemon's cache folder, where a later start
reads them back.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from loguru import logger

MODULE = "flash_attn.cute"
PACKAGE = "flash-attn-4"
CAPABILITY_MAJORS = (9, 10)
"""Hopper and Blackwell: where its kernels use the tensor-core instructions FlashAttention 2 does
not (on 8.x it runs an FA2-class path, nothing to gain)."""
OPERATOR = "_scaled_dot_product_flash_attention"
TEXT_ENCODER_HEAD_WIDTH = 64
"""CLIP's text encoders' heads (both SDXL's), checked beside the UNet's own."""
CACHE_FOLDER = "flash4"
TVM_FFI_FOLDER = "tvm-ffi"
REFUSALS = (AssertionError, NotImplementedError, ValueError, TypeError, RuntimeError)
"""How the package refuses a call (its input checks are ``assert`` statements)."""

_registration: torch.library.Library | None = None
_fallback_logged = False


def configure_cache(cache_dir: Path) -> Path:
    """Keep compiled kernels in ``<cache_dir>/flash4`` (and the tensor hand-off library's builds in
    ``<cache_dir>/tvm-ffi``) unless the environment names folders.

    Read by the package when it is imported, so this runs before ``unavailable``."""
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    # where its tensor hand-off library would build an add-on for a torch without the DLPack C
    # exchange hook (~/.cache is read-only under the system service)
    os.environ.setdefault("TVM_FFI_CACHE_DIR", str(cache_dir / TVM_FFI_FOLDER))
    folder = Path(os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(cache_dir / CACHE_FOLDER)))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@functools.cache
def _module() -> ModuleType:
    return importlib.import_module(MODULE)


def unavailable(device: torch.device) -> str:
    """Why FlashAttention 4 cannot run on ``device``; empty when it can."""
    if device.type != "cuda":
        return "FlashAttention 4 runs on NVIDIA GPUs only"
    try:
        major, minor = torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError) as exc:  # a CUDA build of torch on a machine without one
        return f"no usable CUDA GPU ({exc})"[:300]
    if major not in CAPABILITY_MAJORS:
        return (
            "FlashAttention 4 needs a Hopper or Blackwell GPU "
            f"(compute capability 9.x or 10.x, not {major}.{minor})"
        )
    return _load_failure()


def install_hint(device: torch.device) -> str:
    """For a Hopper or Blackwell GPU on which the package does not load: what it would bring and
    how to get it; empty elsewhere, and where it loads."""
    if device.type != "cuda":
        return ""
    try:
        major, _ = torch.cuda.get_device_capability(device)
    except (RuntimeError, AssertionError):
        return ""
    failure = _load_failure() if major in CAPABILITY_MAJORS else ""
    if not failure:
        return ""
    return (
        f"FlashAttention 4 would make images faster on this GPU (8 % at 1024² on an H200), but {failure}: "
        "pip install 'fooocusd[flash4]'"
    )


@functools.cache
def _load_failure() -> str:
    """Why the package cannot be imported (once per process: a broken install takes seconds)."""
    try:
        _module()
    except Exception as exc:  # not installed, or a CUDA / cutlass build that does not load here
        return f"{PACKAGE} cannot be loaded ({type(exc).__name__}: {exc})"[:300]
    return ""


@functools.cache
def _kernel() -> Callable[..., Any]:
    """The package's ``flash_attn_func``, asked for the log-sum-exp where its version takes that."""
    function = _module().flash_attn_func
    if "return_lse" in inspect.signature(function).parameters:
        return functools.partial(function, return_lse=True)
    return function


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(output, log-sum-exp or None) for (batch, heads, tokens, width) tensors, as SDPA takes them.

    The package takes (batch, tokens, heads, width): for heads split from a projection's output,
    as diffusers lays them out, the transposes are views, not copies."""
    result = _kernel()(*(t.transpose(1, 2) for t in (query, key, value)), softmax_scale=scale, causal=causal)
    output, lse = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
    return output.transpose(1, 2), lse


def _flash_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    return_debug_mask: bool = False,
    *,
    scale: float | None = None,
) -> tuple[Any, ...]:
    """``aten::_scaled_dot_product_flash_attention``'s outputs, computed by FlashAttention 4."""
    batch, heads, queries, _ = query.shape
    if dropout_p or return_debug_mask:  # (training only: this daemon never asks for either)
        raise NotImplementedError("FlashAttention 4 is routed in for inference: no dropout, no debug mask")
    try:
        if is_causal and queries != key.shape[2]:
            # PyTorch aligns that mask top-left, the package bottom-right
            raise ValueError("a causal mask over unequal lengths")
        output, lse = attention(query, key, value, scale=scale, causal=is_causal)
    except REFUSALS as exc:  # a shape or option the package refuses: the same maths, another kernel
        _log_fallback(exc)
        output, lse = _another_kernel(query, key, value, is_causal, scale)
    if lse is None:  # (only the backward pass reads it)
        lse = torch.empty(batch, heads, queries, device=query.device, dtype=torch.float32)
    output = _strided_as_pytorchs(output, query)
    seed = torch.empty(2, device=query.device, dtype=torch.uint64)
    offset = torch.empty((), device=query.device, dtype=torch.uint64)
    debug_mask = query.new_empty(0)
    return output, lse, None, None, queries, key.shape[2], seed, offset, debug_mask


def _strided_as_pytorchs(output: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``output`` laid out as PyTorch's kernel lays it out (and a compiled graph expects it): like
    ``query``. For heads split from a projection, as diffusers and transformers split them, it
    already is; otherwise one copy."""
    expected = torch.empty_like(query, device="meta")
    if output.stride() == expected.stride():
        return output
    return torch.empty_like(query).copy_(output)


def _another_kernel(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    is_causal: bool,
    scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same attention on PyTorch's memory-efficient kernel (on a GPU) or its math (elsewhere)."""
    if query.is_cuda:
        output, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, 0.0, is_causal, scale=scale
        )
        # padded to a multiple of 32 rows there; a compiled graph checks the meta kernel's strides
        return output, lse[..., : query.shape[2]].contiguous()
    output, _ = torch.ops.aten._scaled_dot_product_attention_math(
        query, key, value, None, 0.0, is_causal, scale=scale
    )
    return output, None


def _log_fallback(exc: Exception) -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning(
            "FlashAttention 4 refused an attention call, one of PyTorch's own kernels ran it "
            "(logged once): {}: {}",
            type(exc).__name__,
            exc,
        )


def activate(dispatch_key: str = "CUDA") -> None:
    """Route PyTorch's flash attention calls on ``dispatch_key`` to FlashAttention 4 (process-wide).

    Raises ImportError (or what the package raises) where it cannot be loaded."""
    global _registration
    if _registration is not None:
        return
    _module()
    library = torch.library.Library("aten", "IMPL", dispatch_key)
    with warnings.catch_warnings():  # "overriding a previously registered kernel": that is the point
        warnings.simplefilter("ignore")
        library.impl(OPERATOR, _flash_forward, dispatch_key)
    _registration = library
    logger.debug("attention: PyTorch's flash kernel is FlashAttention 4 ({})", dispatch_key)


def deactivate() -> None:
    """PyTorch's own flash kernel again."""
    global _registration
    if _registration is not None:
        _registration._destroy()
        _registration = None


def active() -> bool:
    return _registration is not None


def dispatch_problem(
    device: torch.device, dtype: torch.dtype, head_widths: Iterable[int] = (TEXT_ENCODER_HEAD_WIDTH,)
) -> str:
    """Why routing PyTorch's flash operator to FlashAttention 4 would change results; empty when not.

    ``auto`` times the kernel called directly at the UNet's shapes; activating reaches every flash
    call in the process, so this also calls the operator SDPA calls, at ``head_widths`` (the UNet's
    and the text encoders'), causal (as a text encoder's may be) and not, against PyTorch's own
    result. Each width and mask kind is a kernel compiled once (kept on disk). Leaves the routing as
    it found it."""
    was_active = active()
    deactivate()  # (the references are PyTorch's own kernels)
    generator = torch.Generator(device=device).manual_seed(2)
    flash = torch.ops.aten._scaled_dot_product_flash_attention
    problems = []
    try:
        with torch.inference_mode():
            cases = []
            for width in sorted(set(head_widths)):
                size = (2, 4, 200, width)
                q, k, v = (torch.randn(size, device=device, dtype=dtype, generator=generator) for _ in "qkv")
                for causal in (False, True):
                    reference = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    cases.append((width, causal, q, k, v, reference))
            activate("CUDA" if device.type == "cuda" else device.type.upper())
            for width, causal, q, k, v, reference in cases:
                result = flash(q, k, v, is_causal=causal)[0]
                if not torch.allclose(result.float(), reference.float(), atol=1e-2, rtol=2e-2):
                    gap = (result.float() - reference.float()).abs().max().item()
                    kind = "causal attention" if causal else "attention"
                    problems.append(f"{kind} with {width}-wide heads differs by up to {gap:.3g}")
    except Exception as exc:
        problems.append(f"PyTorch's flash operator fails: {type(exc).__name__}: {exc}"[:300])
    finally:
        deactivate()
        if was_active:
            activate()
    return "; ".join(problems)
