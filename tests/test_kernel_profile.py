"""The profile case's kernel table (``bench/kernel_profile.py``) on hand-made profiler events."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch.autograd import DeviceType

BENCH = Path(__file__).resolve().parents[1] / "bench"


@dataclass
class Event:
    key: str
    self_device_time_total: float
    device_type: DeviceType
    count: int = 1
    self_cpu_time_total: float = 0.0


def test_gpu_table_counts_each_kernel_once_and_leaves_out_the_launch_queue_marker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    kernel_table = importlib.import_module("kernel_profile").kernel_table
    events = [
        Event("aten::copy_", 400.0, DeviceType.CPU),  # the operator: its kernel is counted below
        Event("void at::native::direct_copy_kernel_cuda", 400.0, DeviceType.CUDA),
        Event("nvjet_sm90_tst_192x192_bias_TNN", 300.0, DeviceType.CUDA),
        Event("pytorch_flash::flash_fwd_kernel", 300.0, DeviceType.CUDA),
        Event("Command Buffer Full", 500.0, DeviceType.CUDA),
    ]

    table = kernel_table(events, device=True)

    assert table["total_ms"] == 1.0
    assert table["by_kind_pct"] == {"layout copy": 40.0, "matmul": 30.0, "attention": 30.0}
    assert table["top"][0]["name"] == "void at::native::direct_copy_kernel_cuda"


@dataclass
class StackedEvent:
    key: str
    device_time_total: float
    stack: list[str]
    count: int = 1
    cpu_time_total: float = 0.0


def test_elementwise_operators_are_grouped_by_operator_and_caller_by_their_kernels_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    profile = importlib.import_module("kernel_profile")
    resnet = ["fooocusd/engine/fused_resnet.py(300): _fused_forward", "torch/nn/modules/module.py(1): _call"]
    guidance = ["fooocusd/engine/guidance.py(92): sharpen_noise_prediction"]
    events = [
        StackedEvent("aten::add_", 3000.0, resnet, count=40),
        StackedEvent("aten::add_", 1000.0, resnet, count=10),  # another stack depth, the same caller
        StackedEvent("aten::mul", 500.0, guidance, count=8),
        StackedEvent("aten::copy_", 9000.0, resnet),  # a copy: in the copies' table, not this one
    ]

    rows = profile.operator_sources(events, profile.ELEMENTWISE_OPERATORS)

    assert rows == [
        {"operator": "aten::add_", "ms": 4.0, "calls": 50, "where": [resnet[0]]},
        {"operator": "aten::mul", "ms": 0.5, "calls": 8, "where": guidance},
    ]
    assert profile.copy_sources(events)[0]["ms"] == 9.0
