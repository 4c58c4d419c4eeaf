"""Putting IP-Adapter attention processors into the base UNet, and taking them out again.

Loading goes through diffusers' own ``pipeline.load_ip_adapter`` with local files
(``local_files_only``, hub forced offline, no image encoder: ours is loaded separately). One adapter
is loaded per *kind* in use (image_prompt, face), in that order; several images of one kind share it.

A job without image prompts must run the plain UNet: ``restore`` puts it back, and so does the
first UNet call that comes without image embeddings (a forward pre-hook). Rather than
``unload_ip_adapter`` (which builds new default processors and would make the next image-prompt job
read the adapter files again), the UNet's own processors are kept and put back, and the IP
processors plus the image projection of the last adapter set stay cached for the next such job.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fooocusd.errors import InvalidInput


@dataclass
class _Installed:
    files: tuple[Path, ...]
    processors: dict[str, Any]
    projection: torch.nn.Module


@dataclass
class _UNetState:
    plain_processors: dict[str, Any]
    plain_projection: Any
    plain_projection_type: Any
    active: tuple[Path, ...] = ()
    cached: _Installed | None = None
    ip_processors: list[Any] = field(default_factory=list)


class AdapterInstaller:
    """Tracks, per base UNet, which adapter files are installed; switches with as little work as possible."""

    def __init__(self) -> None:
        self._states: weakref.WeakKeyDictionary[torch.nn.Module, _UNetState] = weakref.WeakKeyDictionary()

    def install(self, pipeline: Any, files: tuple[Path, ...]) -> list[Any]:
        """Make ``files`` (one per adapter, in order) the UNet's IP-Adapters; returns their processors."""
        unet = pipeline.unet
        state = self._states.get(unet)
        if state is None:
            state = _UNetState(
                dict(unet.attn_processors), unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
            )
            self._states[unet] = state
            unet.register_forward_pre_hook(self._plain_call_guard, with_kwargs=True)
        if state.active == files:
            return state.ip_processors
        self._restore(unet, state)
        cached = state.cached
        if cached is not None and cached.files == files:
            # The projection (a resampler with attention layers) first: its processors are in the dict.
            unet.encoder_hid_proj = cached.projection
            unet.config.encoder_hid_dim_type = "ip_image_proj"
            unet.set_attn_processor(dict(cached.processors))
        else:
            state.cached = None  # let the previous adapters' weights go before loading others
            try:
                _load(pipeline, files)
            except BaseException:
                self._restore(unet, state, force=True)  # no half-installed adapter stays behind
                raise
            state.cached = _Installed(files, dict(unet.attn_processors), unet.encoder_hid_proj)
        state.active = files
        state.ip_processors = [proc for proc in unet.attn_processors.values() if hasattr(proc, "to_k_ip")]
        return state.ip_processors

    def restore(self, pipeline: Any) -> None:
        """Put the plain UNet back (its original processors, no image projection)."""
        state = self._states.get(pipeline.unet)
        if state is not None:
            self._restore(pipeline.unet, state)

    def _plain_call_guard(self, unet: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A UNet call without image embeddings (a job without IP-Adapter prompts) gets the plain UNet.

        So a caller that only asks for extras when a job has image prompts still renders the next plain
        job exactly as if no adapter had ever been loaded.
        """
        state = self._states.get(unet)
        if (
            state is not None
            and state.active
            and "image_embeds" not in (kwargs.get("added_cond_kwargs") or {})
        ):
            self._restore(unet, state)

    @staticmethod
    def _restore(unet: Any, state: _UNetState, *, force: bool = False) -> None:
        if not state.active and not force:
            return
        unet.encoder_hid_proj = state.plain_projection  # first: the resampler's processors must go too
        unet.config.encoder_hid_dim_type = state.plain_projection_type
        unet.set_attn_processor(dict(state.plain_processors))
        state.active = ()
        state.ip_processors = []


def _load(pipeline: Any, files: tuple[Path, ...]) -> None:
    from safetensors import SafetensorError

    from fooocusd.engine.pipeline_loading import offline_hub, reported_failures

    def explain(exc: BaseException) -> InvalidInput:
        bad = ", ".join(path.name for path in files)
        return InvalidInput(
            f"could not load the IP-Adapter {bad}: {type(exc).__name__}: {exc}",
            where=", ".join(str(path) for path in files),
            hint="use the SDXL 'plus' IP-Adapter files for the ViT-H encoder (.safetensors) from "
            "h94/IP-Adapter; a partial download is the usual cause, so download it again",
        )

    failures = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)
    # Outside inference mode: the adapter weights must be ordinary tensors, reusable in any later job.
    with reported_failures(explain, failures=failures), torch.inference_mode(False), offline_hub(), _quiet():
        pipeline.load_ip_adapter(
            [str(path.parent) for path in files],
            subfolder=[""] * len(files),
            weight_name=[path.name for path in files],
            image_encoder_folder=None,
            local_files_only=True,
        )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
