"""CUDA graphs for the base UNet (``engine.cuda_graphs``, "auto" by default): one graph per input shape.

Why: on the H100 the benchmark ran on, Python launching the UNet's kernels one by one took longer
than the GPU took to run them, even at 1024² (docs/benchmarks.md): a 512², 20-step image took
1.27 s under regional compile and 0.33 s as one whole-UNet CUDA graph. torch.compile's own CUDA
graphs (``compile = "unet_full"``, ``compile_mode = "reduce-overhead"``) need about 100 s of
compiling per image size, and do not work with regional compilation (its repeated blocks share one
graph, whose outputs each next block overwrites). Capturing the UNet as it already runs (eager, or
regional compile's kernels) costs two extra forward passes per size instead.

Each bucket (the shapes and dtypes of the five inputs) gets its own graph (``graph_capture.py``:
static buffers, the check against eager, the fallback). All graphs share one memory pool: they never
run at the same time, so the pool holds the largest bucket's activations, not their sum. At most
``max_graphs`` stay captured (least recently used goes first).

What a graph cannot see, it must not be used for:

* extras (ControlNet residuals, IP-Adapter embeddings) and other UNets (inpainting, refiner): the
  caller runs those eagerly;
* active peft LoRA layers: their scale is a Python number that a capture would freeze, so those
  renders run eagerly (folded LoRAs, ``lora_merge.py``, are plain weights changed in place: fine);
* weights or attention processors replaced since the capture (a LoRA loaded, QKV unfused): the
  fingerprint checked before each render changes and every graph is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from loguru import logger

from fooocusd.engine.denoise import NoisePredictor, call_unet
from fooocusd.engine.graph_capture import (
    BucketKey,
    GraphBackend,
    GraphBuckets,
    GraphedModel,
    active_adapter_layers,
    bucket_key,
    weights_fingerprint,
)

MAX_GRAPHS = 6
"""Captured buckets kept: a daemon's common sizes × batch sizes; each costs its static buffers."""


class UNetGraphs(GraphedModel):
    """The captured graphs of one resident UNet, and the buckets that stay eager."""

    def __init__(
        self,
        unet: torch.nn.Module,
        backend: GraphBackend,
        *,
        max_graphs: int = MAX_GRAPHS,
        before_capture: Callable[[], None] = lambda: None,
    ) -> None:
        """``before_capture`` runs before each capture (the engine finishes its deferred decodes
        there, ``decode_lane.py``, so that a capture has the GPU to itself)."""
        self.unet = unet
        self.buckets = GraphBuckets("UNet", backend, max_graphs=max_graphs, before_capture=before_capture)
        self._fingerprint: int | None = None

    def predictor(self, unet: torch.nn.Module) -> NoisePredictor | None:
        """A predictor that replays graphs for ``unet``, or None when it must run eagerly now."""
        if unet is not self.unet or active_adapter_layers(unet):
            return None
        fingerprint = weights_fingerprint(unet)
        if fingerprint != self._fingerprint:
            if self._fingerprint is not None:
                logger.debug("UNet weights or attention processors changed: CUDA graphs dropped")
            self.clear()
            self._fingerprint = fingerprint
        return self._predict

    def clear(self) -> None:
        self.buckets.clear()

    def _predict(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``NoisePredictor``: ``(model_input, timestep, tokens, pooled, time_ids)``."""
        key = bucket_key(inputs)
        replayed = None
        if key is not None:
            replayed = self.buckets.replayed(key, inputs, self._run, lambda: _describe(key))
        return call_unet(self.unet, *inputs) if replayed is None else replayed

    def _run(self, *inputs: torch.Tensor) -> torch.Tensor:
        return call_unet(self.unet, *inputs)


def _describe(key: BucketKey) -> str:
    shape, dtype = key[0]
    return "x".join(map(str, shape)) + f" {str(dtype).removeprefix('torch.')}"
