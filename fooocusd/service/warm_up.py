"""The start-up render (``engine.warm_up``): compiling happens before the daemon says it is ready.

With ``compile`` or ``cuda_graphs`` on, the UNet's first call at a new input shape compiles (about
8 s for regional compile on an H100, less when the compiled code comes back from the cache folder)
or captures a CUDA graph. Without a warm-up that lands in the first job, after systemd was told
READY=1. One discarded render of a default job (``generation.preset`` and the ``generation``
settings: size, CFG, styles and expansion, so the same UNet batch and prompt length, and the
preset's LoRAs) at two steps moves it before that point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from loguru import logger

from fooocusd.engine.base import Engine, GenerationRequest, StopCheck
from fooocusd.engine.expansion import PromptExpansion
from fooocusd.engine.prompt_syntax import WildcardLibrary
from fooocusd.engine.styles import StyleLibrary
from fooocusd.errors import Interrupted
from fooocusd.jobs.presets import load_preset
from fooocusd.jobs.resolve import resolve_requests
from fooocusd.jobs.spec import JobSpec
from fooocusd.service.folders import Folders
from fooocusd.service.job_prep import with_styles
from fooocusd.settings import Settings

WARM_UP_PROMPT = "a lighthouse on a cliff at dawn"
WARM_UP_STEPS = 2
"""Compiled code and CUDA graphs depend on the UNet's input shapes, not on the number of steps."""


def warm_up_request(
    settings: Settings,
    folders: Folders,
    preset_dirs: list[Path],
    styles: StyleLibrary,
    expansion: PromptExpansion | None,
) -> GenerationRequest:
    """The first image of a one-line ``.txt`` job under the default preset, at two steps."""
    spec = JobSpec(prompt=WARM_UP_PROMPT, seed=0)
    preset = load_preset(settings.generation.preset, preset_dirs)
    request = resolve_requests(spec, preset, settings.generation, settings.engine.model)[0]
    styled, _workloads = with_styles(request, 0, WildcardLibrary(folders.wildcards), styles, expansion)
    return dataclasses.replace(styled, steps=WARM_UP_STEPS)


def warm_up(
    engine: Engine,
    request_for: Callable[[], GenerationRequest | None],
    should_stop: StopCheck | None = None,
) -> float | None:
    """Render ``request_for()`` if the engine has something to warm; its seconds, or None (nothing
    to warm, no request, or it failed: the first job then compiles instead and reports its errors)."""
    try:
        seconds = engine.warm_up(request_for, should_stop)
    except Interrupted:
        logger.info("warm-up render stopped: the daemon is stopping")
        return None
    except Exception as exc:  # never fatal (nor is preparing the job): the first job meets and reports it
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("the warm-up render failed, the first job will compile instead: {}", reason)
        return None
    if seconds is not None:
        logger.info("warmed up in {:.1f} s: the default job's shape is compiled and ready", seconds)
    return seconds
