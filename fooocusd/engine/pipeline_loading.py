"""What every diffusers load in fooocusd wraps itself in: offline hub, quiet logs, plain-language errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from fooocusd.errors import ConfigError, ModelNotFound

LOADER_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    RuntimeError,
    TypeError,
    SafetensorError,
)
"""What diffusers, transformers and safetensors raise for a missing, partial or wrong file."""
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Force the Hugging Face hub offline (no downloads, no telemetry) while loading.

    huggingface_hub and diffusers read these switches once, at import time, so the module-level
    copies are patched along with the environment.
    """
    import diffusers.utils.hub_utils as diffusers_hub
    import huggingface_hub.constants as hub_constants

    patched = [
        (hub_constants, "HF_HUB_OFFLINE", True),
        (hub_constants, "HF_HUB_DISABLE_TELEMETRY", True),
        (diffusers_hub, "HF_HUB_OFFLINE", True),
        (diffusers_hub, "HF_HUB_DISABLE_TELEMETRY", True),
    ]
    saved_env = {key: os.environ.get(key) for key in _OFFLINE_ENV}
    saved_attrs = [
        (module, name, getattr(module, name)) for module, name, _ in patched if hasattr(module, name)
    ]
    os.environ.update(_OFFLINE_ENV)
    for module, name, value in patched:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved_attrs:
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars or cast warnings from diffusers while loading: a daemon's log is not a terminal."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    bars_were_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bars_were_enabled:
            diffusers_logging.enable_progress_bar()


@contextlib.contextmanager
def reported_failures(
    explain: Callable[[BaseException], Exception],
    *,
    failures: tuple[type[BaseException], ...] = LOADER_FAILURES,
    passthrough: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Re-raise a loader's ``failures`` as ``explain(exc)`` (chained); ``passthrough`` ones unchanged."""
    try:
        yield
    except passthrough:
        raise
    except failures as exc:
        raise explain(exc) from exc


def load_errors(
    path: Path, label: str = "SDXL", checkpoint: str = "SDXL base"
) -> contextlib.AbstractContextManager[None]:
    """Turn loader exceptions into a ModelNotFound that names the file and what to do.

    ``label`` names the family in the message ("as an SDXL model"), ``checkpoint`` what the hint
    asks for ("a complete SDXL base checkpoint").
    """

    def explain(exc: BaseException) -> ModelNotFound:
        if isinstance(exc, FileNotFoundError):
            return ModelNotFound(f"cannot read {path}: {exc}", where=str(path), hint="check the path")
        return ModelNotFound(
            f"could not load {path.name} as an {label} model: {type(exc).__name__}: {exc}",
            where=str(path),
            hint=f"make sure it is a complete {checkpoint} checkpoint (.safetensors) or diffusers folder; "
            "a partial download is the usual cause, so download it again",
        )

    return reported_failures(explain, passthrough=(torch.cuda.OutOfMemoryError, ConfigError))
