"""GPT-2's next-token logits over a preallocated key/value cache: fixed shapes, one token per step.

Prompt expansion draws its words one token at a time. Through transformers' forward with a growing
cache, GPT-2 small took 12 ms per token on an H100 (docs/benchmarks.md), nearly all of it Python and
kernel launches, about half a second per expanded prompt. Here the same model runs over
key/value buffers sized for the whole expansion (its 75-token target), and each step attends to the
buffer with a mask up to the current position. Every step then has the same shapes, so on a CUDA
GPU the step is recorded once as a CUDA graph (``graph_capture.GraphBackend``) and replayed per token.

The model's own modules do the work (embeddings, layer norms, projections, MLPs, the LM head's
weights); only the attention's cache and mask are ours, with ``scaled_dot_product_attention`` and
the layer's own scaling. Given ``candidates`` (the only tokens the expansion may sample), the LM head
computes just those rows, for the last position only: GPT-2's head is 50,257 rows, 31 % of a token's
multiply-adds, and the logits copied to the host shrink to a few hundred. The logits match
transformers' forward within float rounding. Each capture is checked
against the eager step; a mismatch or a capture error leaves that cache length eager, with a
warning. Only plain GPT-2 (``model_type`` "gpt2", no cross-attention or reordered upcast attention)
takes this path; ``supports`` says why another model does not.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from loguru import logger
from torch.nn import functional

from fooocusd.engine.graph_capture import CaptureRefused, GraphBackend, capture_checked

MAX_CACHES = 4
"""Cache lengths kept (with their graphs); prompts of up to 75 tokens all use the first, 75."""


def supports(model: torch.nn.Module) -> str:
    """Why ``model`` cannot take the static path ("" when it can)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "gpt2":
        return f"not a GPT-2 model ({getattr(config, 'model_type', type(model).__name__)})"
    if getattr(config, "add_cross_attention", False):
        return "GPT-2 with cross-attention"
    if getattr(config, "reorder_and_upcast_attn", False):
        return "GPT-2 with reordered, upcast attention"
    if not hasattr(model, "transformer") or not hasattr(model, "lm_head"):
        return "not a GPT-2 language model head"
    return ""


@dataclass
class _Cache:
    """Key and value buffers for every layer, (1, heads, length, head width) each, plus the graph."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    token: torch.Tensor
    """The step's static input: (1, 1) token id."""
    position: torch.Tensor
    """The step's static input: (1,) position of that token."""
    replay: Callable[[], None] | None = None
    output: torch.Tensor | None = None
    eager_reason: str = ""


class StaticGPT2:
    """Next-token logits for one sequence at a time: ``start(prompt_ids)``, then ``step(token)``."""

    def __init__(
        self,
        model: torch.nn.Module,
        backend: GraphBackend | None = None,
        candidates: Sequence[int] | None = None,
    ) -> None:
        """``candidates``: the token ids whose logits the steps return, in that order (None: all)."""
        reason = supports(model)
        if reason:
            raise ValueError(f"the static expansion step needs plain GPT-2: {reason}")
        self.model = model
        head = model.lm_head
        bias = getattr(head, "bias", None)
        with torch.no_grad():
            rows = None if candidates is None else torch.tensor(list(candidates), device=head.weight.device)
            self._head_weight = head.weight if rows is None else head.weight[rows].contiguous()
            self._head_bias = bias if bias is None or rows is None else bias[rows]
        self._backend = backend
        self._caches: OrderedDict[int, _Cache] = OrderedDict()
        self._cache: _Cache | None = None
        self._next_position = 0
        self.captures = 0
        self.replays = 0

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @torch.inference_mode()
    def start(self, prompt_ids: tuple[int, ...], length: int) -> torch.Tensor:
        """Run the prompt into a cache of ``length`` positions; the logits after its last token
        (float32, on the CPU, shape (candidates,))."""
        if not 0 < len(prompt_ids) <= length:
            raise ValueError(f"a prompt of {len(prompt_ids)} tokens does not fit a cache of {length}")
        self._cache = self._cache_of(length)
        tokens = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(len(prompt_ids), device=self.device)
        logits = self._forward(self._cache, tokens, positions)
        self._next_position = len(prompt_ids)
        return logits.to("cpu", torch.float32, copy=True)  # a replay rewrites its output

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        """Append ``token``; the logits for the position after it (float32, CPU, (candidates,))."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("start() a sequence before stepping it")
        if self._next_position >= cache.keys[0].shape[2]:
            raise ValueError("the sequence is already as long as its cache")
        cache.token.fill_(token)
        cache.position.fill_(self._next_position)
        self._next_position += 1
        logits = self._replayed(cache)
        if logits is None:
            logits = self._forward(cache, cache.token, cache.position)
        return logits.to("cpu", torch.float32, copy=True)  # a replay rewrites its output

    def _replayed(self, cache: _Cache) -> torch.Tensor | None:
        """The step through the cache's CUDA graph (captured on first use); None: run it eagerly."""
        if self._backend is None or cache.eager_reason:
            return None
        if cache.replay is None:
            self._capture(cache)
            if cache.replay is None:
                return None
        cache.replay()
        self.replays += 1
        assert cache.output is not None
        return cache.output

    def _capture(self, cache: _Cache) -> None:
        assert self._backend is not None

        def run() -> torch.Tensor:
            # Each run writes this step's key and value at the same position: repeating it is harmless.
            return self._forward(cache, cache.token, cache.position)

        try:
            cache.replay, cache.output = capture_checked(self._backend, run)
        except CaptureRefused as refusal:
            cache.eager_reason = str(refusal)
            length = cache.keys[0].shape[2]
            logger.warning("prompt expansion runs without a CUDA graph for {} tokens: {}", length, refusal)
            return
        self.captures += 1

    def _cache_of(self, length: int) -> _Cache:
        cache = self._caches.get(length)
        if cache is not None:
            self._caches.move_to_end(length)
            return cache
        while len(self._caches) >= MAX_CACHES:
            self._caches.popitem(last=False)
        config = self.model.config
        heads = int(config.n_head)
        shape = (1, heads, length, int(config.n_embd) // heads)
        weight = self.model.lm_head.weight
        layers = range(int(config.n_layer))
        cache = _Cache(
            keys=[torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in layers],
            values=[torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in layers],
            token=torch.zeros((1, 1), dtype=torch.long, device=weight.device),
            position=torch.zeros((1,), dtype=torch.long, device=weight.device),
        )
        self._caches[length] = cache
        return cache

    def _forward(self, cache: _Cache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The candidates' logits after the last of ``tokens`` (at ``positions``), writing their keys
        and values into ``cache``; each position attends to the cache up to itself."""
        transformer = self.model.transformer
        length = cache.keys[0].shape[2]
        # (queries, cache length): a query sees the cached positions up to and including its own.
        visible = torch.arange(length, device=positions.device)[None, :] <= positions[:, None]
        hidden = transformer.wte(tokens) + transformer.wpe(positions)[None]
        for index, block in enumerate(transformer.h):
            attended = _attention(
                block.attn, block.ln_1(hidden), cache.keys[index], cache.values[index], positions, visible
            )
            hidden = hidden + attended
            hidden = hidden + block.mlp(block.ln_2(hidden))
        last = transformer.ln_f(hidden[0, -1])
        return functional.linear(last, self._head_weight, self._head_bias)


def _attention(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    """One GPT-2 self-attention over the static cache: project, store this step's keys and values at
    ``positions``, attend, project back."""
    heads, width = keys.shape[1], keys.shape[3]
    query, key, value = attn.c_attn(hidden).split(heads * width, dim=2)
    split = (hidden.shape[0], hidden.shape[1], heads, width)
    query = query.view(split).transpose(1, 2)
    keys.index_copy_(2, positions, key.view(split).transpose(1, 2))
    values.index_copy_(2, positions, value.view(split).transpose(1, 2))
    attended = functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=visible[None, None], scale=_scaling(attn, width)
    )
    merged = attended.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], heads * width)
    projected: torch.Tensor = attn.c_proj(merged)
    return projected


def _scaling(attn: torch.nn.Module, width: int) -> float:
    """The layer's attention scale: transformers 5 stores it, earlier versions derive it per call."""
    stored = getattr(attn, "scaling", None)
    if stored is not None:
        return float(stored)
    scale = width**-0.5 if getattr(attn, "scale_attn_weights", True) else 1.0
    if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
        scale /= float(attn.layer_idx + 1)
    return scale
