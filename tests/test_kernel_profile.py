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
