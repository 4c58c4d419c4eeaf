"""Low-VRAM mode: keep only what the running stage needs on the accelerator.

Our generation loop calls ``pipeline.text_encoder``, ``pipeline.unet`` and ``pipeline.vae`` directly
(not through ``StableDiffusionXLPipeline.__call__``), so offloading must follow the modules, not the
pipeline: every managed module gets a forward pre-hook that makes its *stage* the resident one.

* Text encoders (stage "text", 1.6 GB in bf16) move whole onto the accelerator when one of them runs
  and back to the CPU as soon as another stage starts. Their inputs are moved along, because the
  conditioning code builds token ids on ``encoder.device``, which is the CPU while they wait there.
* The UNet (stage "denoise", 5.1 GB, more than a 4 GiB card holds) never moves whole: diffusers'
  group offloading streams its layers in one at a time (leaf level; on CUDA with a side stream that
  prefetches the next layer). Its pre-hook only evicts the text encoders.
* The VAE (0.17 GB) stays resident; its decode is tiled with tiles small enough to matter at 1024²
  (the stock SDXL tiles are 1024 px, which never split a 1024² image).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

Mover = Callable[[nn.Module, torch.device], None]

CPU = torch.device("cpu")
LOW_VRAM_TILE_FRACTION = 2
"""Low-VRAM decode tiles are 1/2 of the VAE's native sample size: 512 px for SDXL."""


def move_module(module: nn.Module, device: torch.device) -> None:
    module.to(device)


class StageOffload:
    """Keeps the modules of one stage on the execution device and the movable rest on the offload device."""

    def __init__(
        self, execution: torch.device, offload: torch.device = CPU, move: Mover = move_module
    ) -> None:
        self.execution = execution
        self.offload = offload
        self._move = move
        self._stages: dict[str, list[tuple[nn.Module, bool]]] = {}
        self._handles: list[Any] = []
        self.active: str | None = None
        self.moves = 0
        """How many module moves were made (a stage change moves each movable module once)."""

    def add(self, stage: str, module: nn.Module, *, movable: bool = True) -> None:
        """Manage ``module`` as part of ``stage``; a module that manages its own placement is not movable."""
        self._stages.setdefault(stage, []).append((module, movable))
        if movable:
            self._move(module, self.offload)
        hook = self._hook_for(stage, movable)
        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def enter(self, stage: str) -> None:
        """Make ``stage`` the resident one (no moves when it already is)."""
        if stage == self.active:
            return
        for name, members in self._stages.items():
            if name == stage:
                continue
            for module, movable in members:
                if movable:
                    self._move(module, self.offload)
                    self.moves += 1
        for module, movable in self._stages.get(stage, []):
            if movable:
                self._move(module, self.execution)
                self.moves += 1
        self.active = stage

    def remove(self) -> None:
        """Take the hooks off (the modules stay where they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook_for(self, stage: str, movable: bool) -> Callable[..., Any]:
        def before_forward(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            self.enter(stage)
            if not movable:
                return None
            return _to_device(args, self.execution), _to_device(kwargs, self.execution)

        return before_forward


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(item, device) for item in value)
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


def install_low_vram(pipeline: Any, execution: torch.device) -> StageOffload:
    """Low-VRAM placement for an SDXL pipeline whose modules are still on the CPU."""
    offload = StageOffload(execution)
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipeline, name, None)
        if encoder is not None:
            offload.add("text", encoder)
    unet = pipeline.unet
    unet.enable_group_offload(
        onload_device=execution,
        offload_device=CPU,
        offload_type="leaf_level",
        use_stream=execution.type == "cuda",
    )
    offload.add("denoise", unet, movable=False)
    pipeline.vae.to(execution)
    return offload


@contextlib.contextmanager
def small_decode_tiles(vae: Any) -> Iterator[None]:
    """Tiled VAE decode (and encode) with tiles of half the VAE's sample size, for this block."""
    if not hasattr(vae, "enable_tiling"):
        yield
        return
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    size = vae.config.sample_size
    sample = int(size[0] if isinstance(size, list | tuple) else size)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    tile = max(scale * 8, sample // LOW_VRAM_TILE_FRACTION)
    vae.use_tiling = True
    vae.tile_sample_min_size = tile
    vae.tile_latent_min_size = tile // scale
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved
