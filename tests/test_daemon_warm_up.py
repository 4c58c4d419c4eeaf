"""The start-up warm-up render (``engine.warm_up``): a default job's shape, before "ready"."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.sdxl import SDXLEngine
from fooocusd.engine.styles import load_styles
from fooocusd.engine.unet_graphs import UNetGraphs
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.jobs.spec import parse_aspect
from fooocusd.service.daemon import Daemon
from fooocusd.service.folders import prepare_folders
from fooocusd.service.warm_up import WARM_UP_STEPS, warm_up, warm_up_request
from tests.daemon_harness import Sandbox
from tests.engine_helpers import ReplayByRerun, tiny_engine_with


def _default_job_request(sandbox: Sandbox) -> GenerationRequest:
    settings = sandbox.settings()
    folders = prepare_folders(settings)
    styles = load_styles([folders.styles] if folders.styles else [])
    return warm_up_request(settings, folders, preset_search_dirs(folders.presets), styles, None)


def test_the_warm_up_render_is_a_default_jobs_first_image_at_two_steps(sandbox: Sandbox) -> None:
    sandbox.write_config('aspect = "896*1152"\ncfg = 5.0\nstyles = ["Fooocus Sharp"]')

    request = _default_job_request(sandbox)

    assert request.steps == WARM_UP_STEPS
    assert (request.width, request.height) == parse_aspect("896*1152")
    assert request.cfg == 5.0 and request.styles == ("Fooocus Sharp",)
    assert len(request.positive_workloads) >= 1 and request.negative_workloads  # styled like a job


def test_an_engine_with_cuda_graphs_warms_the_shape_its_first_default_job_then_replays(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    engine = tiny_engine_with(tmp_path)
    plan = engine._accelerator.plan
    assert plan is not None
    plan.cuda_graphs = True
    graphs = engine._accelerator.graphs = UNetGraphs(engine._pipeline.unet, ReplayByRerun())  # type: ignore[union-attr]
    request = _default_job_request(sandbox)

    seconds = warm_up(engine, lambda: request)

    assert seconds is not None and seconds > 0
    assert (graphs.captures, graphs.replays) == (1, WARM_UP_STEPS)
    engine.generate(dataclasses.replace(request, steps=30, seed=7))  # the first real job
    assert (graphs.captures, graphs.replays) == (1, WARM_UP_STEPS + 30)


def test_an_eager_engine_has_nothing_to_warm_and_neither_prepares_nor_renders_a_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = tiny_engine_with(tmp_path)
    rendered: list[GenerationRequest] = []
    monkeypatch.setattr(engine, "generate", lambda request, **_: rendered.append(request))

    def never_prepared() -> GenerationRequest:
        raise AssertionError("the warm-up job was prepared (prompt expansion ran) for nothing")

    assert warm_up(engine, never_prepared) is None
    assert rendered == []


class _FailingEngine:
    def warm_up(self, request_for: Any, should_stop: Any = None) -> float | None:
        raise RuntimeError("CUDA error: out of memory")


def test_a_failed_warm_up_is_a_warning_not_a_failed_start(sandbox: Sandbox) -> None:
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        assert warm_up(_FailingEngine(), lambda: _default_job_request(sandbox)) is None  # type: ignore[arg-type]
    finally:
        logger.remove(sink)
    assert any("warm-up render failed" in line and "out of memory" in line for line in warnings)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_daemon_warms_up_before_it_serves_unless_told_not_to(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    settings = sandbox.settings()
    settings = settings.model_copy(update={"engine": settings.engine.model_copy(update={"warm_up": enabled})})
    calls: list[GenerationRequest] = []

    def recording(self: SDXLEngine, request_for: Any, should_stop: Any = None) -> None:
        calls.append(request_for())

    monkeypatch.setattr(SDXLEngine, "warm_up", recording)

    Daemon(settings).run(drain=True)

    assert [call.steps for call in calls] == ([WARM_UP_STEPS] if enabled else [])
