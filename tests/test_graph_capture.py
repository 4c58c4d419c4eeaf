"""The CUDA graph capture layer (``graph_capture.py``) on the CPU.

Real captures need an NVIDIA GPU (the GPU check's ``graphs`` cases run them). Here the replay check
runs on real tensors, and ``CudaGraphBackend``'s bookkeeping runs against a stand-in for the few
``torch.cuda`` calls it makes, recording which memory pool each capture asked for: the two failures
an H100 showed on 2026-11-27 were a capture joining a pool whose graphs were all gone, and the
default generator left in capture mode by a capture that failed.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from fooocusd.engine import graph_capture
from fooocusd.engine.graph_capture import CudaGraphBackend, capture_mismatch


def _text_encoder_like_output() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(1, 77, 768, generator=generator)
    values[0, 0, 0] = 3.95
    return values.to(torch.bfloat16)


def test_replay_check_accepts_bf16_rounding_of_the_largest_element() -> None:
    reference = _text_encoder_like_output()
    replayed = reference.clone()
    replayed[0, 0, 0] += 0.0625  # two bf16 ulps at 3.95: refused by the old max-abs check

    assert capture_mismatch(replayed, reference) == ""


def test_replay_check_accepts_a_text_encoders_rounding_spread_through_its_layers() -> None:
    reference = _text_encoder_like_output()
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(1))
    relative = 0.0107  # CLIP-G's replay against its eager run on an H100
    scale = relative * torch.linalg.vector_norm(reference.float()) / torch.linalg.vector_norm(noise)
    replayed = (reference.float() + noise * scale).to(torch.bfloat16)

    assert capture_mismatch(replayed, reference) == ""


@pytest.mark.parametrize(
    "damage",
    [
        lambda out: out[0, 5].zero_(),  # one token's row never written (a stale buffer)
        lambda out: out.mul_(1.05),  # everything a little off
        lambda out: out[0, 3, 7].fill_(float("nan")),
    ],
)
def test_replay_check_refuses_a_stale_row_a_drift_or_a_nan(damage: Any) -> None:
    reference = _text_encoder_like_output()
    replayed = reference.clone()
    damage(replayed)

    assert capture_mismatch(replayed, reference).startswith("replay differs from eager by")


class FakeCuda:
    """Stands in for the ``torch.cuda`` calls ``CudaGraphBackend`` makes; records the pools."""

    def __init__(self) -> None:
        self.pools_made = 0
        self.capture_pools: list[int] = []
        self.fail_next_capture = ""

    def graph_pool_handle(self) -> int:
        self.pools_made += 1
        return self.pools_made

    @contextlib.contextmanager
    def graph(self, graph: object, pool: int, capture_error_mode: str = "global") -> Iterator[None]:
        self.capture_pools.append(pool)
        if self.fail_next_capture:
            message, self.fail_next_capture = self.fail_next_capture, ""
            raise RuntimeError(message)
        yield


class FakeGraph:
    def replay(self) -> None:
        pass


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    fake = FakeCuda()
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", fake.graph_pool_handle)
    monkeypatch.setattr(torch.cuda, "graph", fake.graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    return fake


class _FakeStream:
    def wait_stream(self, other: object) -> None:
        pass


def _run() -> torch.Tensor:
    return torch.ones(2)


def test_graphs_share_a_pool_while_one_lives_and_a_capture_after_the_last_takes_a_new_one(
    fake_cuda: FakeCuda,
) -> None:
    backend = CudaGraphBackend(torch.device("cuda"))
    first = backend.capture(_run)
    second = backend.capture(_run)
    del first
    gc.collect()
    third = backend.capture(_run)  # `second` still lives: same pool
    del second, third
    gc.collect()
    backend.capture(_run)  # none lives: PyTorch would assert on joining the old pool

    assert fake_cuda.capture_pools == [1, 1, 1, 2]


def test_a_failed_capture_repairs_the_generator_and_the_next_capture_takes_a_new_pool(
    fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    repaired: list[torch.device] = []
    monkeypatch.setattr(graph_capture, "repair_generator", repaired.append)
    backend = CudaGraphBackend(torch.device("cuda"))
    kept = backend.capture(_run)
    fake_cuda.fail_next_capture = "operation not permitted when stream is capturing"

    with pytest.raises(RuntimeError, match="not permitted"):
        backend.capture(_run)
    backend.capture(_run)

    assert repaired == [torch.device("cuda")]
    assert fake_cuda.capture_pools == [1, 1, 2]
    assert kept is not None


def test_generator_left_in_capture_mode_is_repaired_by_one_completed_capture(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = {"capturing": True, "captures": 0, "inside": False}

    class Draw:
        def normal_(self) -> None:
            if state["capturing"] and not state["inside"]:
                raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")

    @contextlib.contextmanager
    def completed_capture(graph: object, pool: int) -> Iterator[None]:
        state["inside"] = True
        yield
        state.update(inside=False, capturing=False, captures=state["captures"] + 1)  # the epilogue

    monkeypatch.setattr(torch, "empty", lambda *shape, device=None: Draw())
    monkeypatch.setattr(torch.cuda, "graph", completed_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: 9)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)

    graph_capture.repair_generator(torch.device("cuda"))
    assert state == {"capturing": False, "captures": 1, "inside": False}

    graph_capture.repair_generator(torch.device("cuda"))  # a healthy generator: nothing captured
    assert state["captures"] == 1


def test_a_generator_that_cannot_be_repaired_leaves_the_captures_own_error_to_report(
    fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch
) -> None:
    def still_broken(device: torch.device) -> None:
        raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")

    monkeypatch.setattr(graph_capture, "repair_generator", still_broken)
    backend = CudaGraphBackend(torch.device("cuda"))
    fake_cuda.fail_next_capture = "operation not permitted when stream is capturing"

    with pytest.raises(RuntimeError, match="not permitted"):
        backend.capture(_run)
