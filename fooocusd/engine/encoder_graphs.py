"""CUDA graphs for the text encoders (with ``engine.cuda_graphs = "on"``): one per encoder and layer.

Encoding one prompt line runs CLIP-L and CLIP-G once each: about a thousand small kernels, each
launched by Python, for a few milliseconds of GPU work. On the benchmark's H100 host that launching
costs more than the work. Every call has the same shape (one 77-token block), so each encoder is
recorded once per CLIP skip as a graph (``graph_capture.py``: static buffers, the check against
eager, the fallback) and replayed for every block after.

A replay gives back the hidden states the CLIP skip selects and the encoder's first output (CLIP-G's
projected pooled vector, or CLIP-L's last hidden state), packed into one tensor inside the graph.

Like the UNet's graphs, these are not used while peft LoRA layers run in an encoder (their scale is
a Python number a capture would freeze), and a replaced weight (an embedding's new token rows, a
LoRA's layers) drops them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from loguru import logger

from fooocusd.engine.graph_capture import (
    GraphBackend,
    GraphBuckets,
    GraphedModel,
    active_adapter_layers,
    weights_fingerprint,
)

MAX_GRAPHS = 4
"""Two encoders × two CLIP skips; each graph holds one 77-token block's activations."""

EncoderOutputs = tuple[torch.Tensor, torch.Tensor]
"""``(hidden_states[-clip_skip], output[0])`` of one encoder call."""


def encoder_outputs(encoder: torch.nn.Module, ids: torch.Tensor, clip_skip: int) -> EncoderOutputs:
    """One eager encoder call: the hidden states ``clip_skip`` selects, and its first output."""
    output = encoder(ids, output_hidden_states=True)
    return output.hidden_states[-clip_skip], output[0]


class EncoderGraphs(GraphedModel):
    """The captured text-encoder graphs of the resident pipeline."""

    record_prefix = "text_encoder_graph"

    def __init__(
        self,
        backend: GraphBackend,
        *,
        max_graphs: int = MAX_GRAPHS,
        before_capture: Callable[[], None] = lambda: None,
    ) -> None:
        self.buckets = GraphBuckets(
            "text encoder", backend, max_graphs=max_graphs, before_capture=before_capture
        )
        self._fingerprints: dict[int, int] = {}
        self._shapes: dict[tuple[int, int, tuple[int, ...]], tuple[torch.Size, torch.Size]] = {}

    def outputs(self, encoder: torch.nn.Module, ids: torch.Tensor, clip_skip: int) -> EncoderOutputs:
        """``encoder_outputs``, replayed from a graph where one can be used."""
        if active_adapter_layers(encoder):
            return encoder_outputs(encoder, ids, clip_skip)
        self._forget_if_changed(encoder)
        key = (id(encoder), clip_skip, tuple(ids.shape))

        def packed(static_ids: torch.Tensor) -> torch.Tensor:
            hidden, first = encoder_outputs(encoder, static_ids, clip_skip)
            self._shapes[key] = (hidden.shape, first.shape)
            return torch.cat([hidden.reshape(-1), first.reshape(-1)])

        replayed = self.buckets.replayed(key, (ids,), packed, lambda: _describe(encoder, clip_skip))
        if replayed is None:
            return encoder_outputs(encoder, ids, clip_skip)
        hidden_shape, first_shape = self._shapes[key]
        split = hidden_shape.numel()
        # (the pooled vector is cloned: a view would keep the whole packed buffer alive wherever it is kept)
        return replayed[:split].view(hidden_shape), replayed[split:].view(first_shape).clone()

    def _forget_if_changed(self, encoder: torch.nn.Module) -> None:
        fingerprint = weights_fingerprint(encoder)
        known = self._fingerprints.get(id(encoder))
        if known is not None and known != fingerprint:
            logger.debug("text encoder weights changed: its CUDA graphs dropped")
            self.buckets.clear()
            self._fingerprints.clear()
        self._fingerprints[id(encoder)] = fingerprint


def _describe(encoder: torch.nn.Module, clip_skip: int) -> str:
    return f"{type(encoder).__name__} at CLIP skip {clip_skip}"
