"""Where the device's time goes during a render: the top operators by self time, and by kind.

Used by ``fooocusd_bench.py``'s ``profile`` case (a batch of 4 at 1024², the GPU-bound case) on
``torch.profiler`` results. On a GPU it ranks kernels by self device time; on a CPU, operators by
self CPU time (a plumbing check).

On a GPU only the kernels count: an operator (``aten::copy_``) also carries the device time of the
kernels it launched, and counting both doubled the total in the 2026-11-27 H100 report; and CUPTI's
"Command Buffer Full" marker (the host waiting for room in the launch queue) is no kernel at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

NORMALISATION = (
    "group_norm",
    "layer_norm",
    "groupnorm",
    "layernorm",
    "welford",
    "rowwisemoments",
    "fusedparams",
)
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("triton (compiled)", ("triton",)),  # first: fused kernels' names mention what they fused
    ("attention", ("flash", "fmha", "attention", "sdpa", "efficient_attention")),
    ("normalisation", NORMALISATION),
    ("convolution", ("conv", "cudnn", "implicit_gemm", "xmma_fprop", "sm90_xmma")),
    ("matmul", ("gemm", "cutlass", "matmul", "addmm", "bmm", "aten::mm", "nvjet")),
    ("layout copy", ("copy", "contiguous", "memcpy", "transpose", "permute", "nchw", "nhwc")),
)


NOT_KERNELS = ("Command Buffer Full",)
"""Device-side events of the profiler that are no kernel's work."""


def kind_of(name: str) -> str:
    """A kernel's or operator's kind, from its name; "elementwise and other" when none matches."""
    lowered = name.lower()
    for kind, needles in KINDS:
        if any(needle in lowered for needle in needles):
            return kind
    return "elementwise and other"


def self_time_us(event: Any, device: bool) -> float:
    """An averaged profiler event's self time in µs, on the device or the CPU (torch renamed the
    device field from ``self_cuda_time_total``)."""
    if not device:
        return float(event.self_cpu_time_total)
    value = getattr(event, "self_device_time_total", None)
    if value is None:
        value = getattr(event, "self_cuda_time_total", 0.0)
    return float(value)


def is_kernel(event: Any) -> bool:
    """A kernel (or a device copy) run on the GPU, not an operator that launched one."""
    on_device = str(getattr(event, "device_type", "")).rsplit(".", 1)[-1] == "CUDA"
    return on_device and event.key not in NOT_KERNELS


def kernel_table(events: Iterable[Any], *, device: bool, top: int = 25) -> dict[str, Any]:
    """The ``top`` events by self time, and the total per kind, in ms and % of the whole."""
    if device:
        events = [event for event in events if is_kernel(event)]
    timed = [(event.key, self_time_us(event, device), int(event.count)) for event in events]
    timed = [row for row in timed if row[1] > 0]
    total = sum(us for _, us, _ in timed) or 1.0
    by_kind: dict[str, float] = {}
    for name, us, _ in timed:
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + us
    timed.sort(key=lambda row: row[1], reverse=True)
    return {
        "clock": "device" if device else "cpu",
        "total_ms": round(total / 1000, 2),
        "by_kind_pct": {
            kind: round(100 * us / total, 1) for kind, us in sorted(by_kind.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"name": name[:90], "ms": round(us / 1000, 3), "calls": calls, "pct": round(100 * us / total, 1)}
            for name, us, calls in timed[:top]
        ],
    }


OWN_FRAMES = ("fooocusd", "diffusers", "transformers")


ELEMENTWISE_OPERATORS = (
    "aten::add",
    "aten::add_",
    "aten::sub",
    "aten::mul",
    "aten::mul_",
    "aten::div",
    "aten::addcmul",
    "aten::silu",
    "aten::gelu",
    "aten::clamp_min",
    "aten::where",
)
"""Eager pointwise operators: the "elementwise and other" kernels they launch (a bias added after
a convolution, a residual, a guidance formula) carry no caller in their names."""


def copy_sources(events: Iterable[Any], *, top: int = 8) -> list[dict[str, Any]]:
    """The operators that copied tensors, grouped by where in our or diffusers' code they were
    called (``key_averages(group_by_stack_n=...)`` of a profile taken ``with_stack=True``), by the
    device time of the kernels they launched: which layer still copies activations."""
    return operator_sources(events, ("aten::copy_",), top=top)  # clone, contiguous, _to_copy end in it


def operator_sources(
    events: Iterable[Any], operators: Iterable[str], *, top: int = 8
) -> list[dict[str, Any]]:
    """The calls of ``operators``, grouped by operator and by where in our or diffusers' code they
    were called (``key_averages(group_by_stack_n=...)`` of a profile taken ``with_stack=True``), by
    the device time of the kernels they launched."""
    wanted = set(operators)
    merged: dict[tuple[str, ...], dict[str, Any]] = {}
    for event in events:
        if event.key not in wanted:
            continue
        ms = float(getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0))) / 1000
        if ms <= 0:
            ms = float(event.cpu_time_total) / 1000
        frames = [line for line in (event.stack or []) if any(own in line for own in OWN_FRAMES)]
        key = (event.key, *frames[:3])
        row = merged.setdefault(key, {"operator": event.key, "ms": 0.0, "calls": 0, "where": frames[:3]})
        row["ms"] += ms
        row["calls"] += int(event.count)
    rows = sorted(merged.values(), key=lambda row: row["ms"], reverse=True)[:top]
    return [{**row, "ms": round(row["ms"], 3)} for row in rows]
