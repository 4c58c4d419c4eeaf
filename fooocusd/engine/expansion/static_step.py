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

Rows: on a GPU every cache holds ``ROWS`` sequences, and each step advances all of them at once
(each at its own position, with its own mask), so several prompts expand for the price of one: at
one token per step a GPU step is bound by launches and weight reads, not by the rows. A prompt
always runs in a cache of that many rows, alone or beside others, and every operation works row by
row (its matrix products see the same shapes either way), so a prompt's logits do not depend on its
neighbours. On a CPU the matrix products cost in proportion to the rows (four rows took 2.5 times
as long as one), so a cache there holds one.
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
ROWS = 4
"""Sequences per cache on a GPU: a batch of images' expansions in one step
(``batching.AUTO_BATCH_SIZE_ON_GPU``)."""


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
    """Key and value buffers for every layer, (rows, heads, length, head width) each, plus the graph."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    tokens: torch.Tensor
    """The step's static input: (rows, 1) token ids."""
    positions: torch.Tensor
    """The step's static input: (rows, 1) position of each row's token."""
    replay: Callable[[], None] | None = None
    output: torch.Tensor | None = None
    eager_reason: str = ""

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def row(self, index: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One row's key and value buffers, as views (writes land in the cache)."""
        keys = [layer[index : index + 1] for layer in self.keys]
        return keys, [layer[index : index + 1] for layer in self.values]


class StaticGPT2:
    """Next-token logits for up to ``rows`` sequences at a time: ``start_rows(prompts)``, then
    ``step_rows(tokens)``; ``start`` and ``step`` for one."""

    def __init__(
        self,
        model: torch.nn.Module,
        backend: GraphBackend | None = None,
        candidates: Sequence[int] | None = None,
        rows: int | None = None,
    ) -> None:
        """``candidates``: the token ids whose logits the steps return, in that order (None: all).
        ``rows``: sequences per cache (None: ``ROWS`` on a GPU, 1 elsewhere)."""
        reason = supports(model)
        if reason:
            raise ValueError(f"the static expansion step needs plain GPT-2: {reason}")
        self.model = model
        head = model.lm_head
        bias = getattr(head, "bias", None)
        with torch.no_grad():
            kept = None if candidates is None else torch.tensor(list(candidates), device=head.weight.device)
            self._head_weight = head.weight if kept is None else head.weight[kept].contiguous()
            self._head_bias = bias if bias is None or kept is None else bias[kept]
        self._backend = backend
        self.rows = rows or (ROWS if head.weight.device.type == "cuda" else 1)
        self._caches: OrderedDict[int, _Cache] = OrderedDict()
        self._cache: _Cache | None = None
        self._next_positions = torch.zeros(0, dtype=torch.long)
        """(started rows,): where each row's next token goes, on the model's device."""
        self.captures = 0
        self.replays = 0

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def start(self, prompt_ids: tuple[int, ...], length: int) -> torch.Tensor:
        """``start_rows`` for one prompt: its logits, shape (candidates,)."""
        return self.start_rows([prompt_ids], length)[0]

    def step(self, token: int) -> torch.Tensor:
        """``step_rows`` for one sequence: the logits after ``token``, shape (candidates,)."""
        return self.step_rows([token])[0]

    @torch.inference_mode()
    def start_rows(self, prompts: Sequence[tuple[int, ...]], length: int) -> torch.Tensor:
        """``start_rows_on_device``, the logits copied to the host (float32)."""
        return self.start_rows_on_device(prompts, length).to("cpu", torch.float32)

    @torch.inference_mode()
    def start_rows_on_device(self, prompts: Sequence[tuple[int, ...]], length: int) -> torch.Tensor:
        """Run up to ``rows`` prompts into the rows of a cache of ``length`` positions; the logits after
        each one's last token (on the model's device, shape (prompts, candidates))."""
        if not 0 < len(prompts) <= self.rows:
            raise ValueError(f"{len(prompts)} prompts: a cache holds 1 to {self.rows}")
        for prompt_ids in prompts:
            if not 0 < len(prompt_ids) <= length:
                raise ValueError(f"a prompt of {len(prompt_ids)} tokens does not fit a cache of {length}")
        self._cache = cache = self._cache_of(length)
        logits = []
        for index, prompt_ids in enumerate(prompts):
            keys, values = cache.row(index)
            tokens = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
            positions = torch.arange(len(prompt_ids), device=self.device)[None]
            logits.append(self._forward(keys, values, tokens, positions))
        cache.tokens.zero_()  # rows beyond the prompts step at position 0 of their own, unused row
        cache.positions.zero_()
        self._next_positions = torch.tensor(
            [len(ids) for ids in prompts], dtype=torch.long, device=self.device
        )
        return torch.cat(logits)

    @torch.inference_mode()
    def step_rows(self, tokens: Sequence[int | None]) -> torch.Tensor:
        """``step_rows_on_device`` from host values: each row's token, None for a finished row; the
        logits copied to the host (float32)."""
        cache = self._started()
        if len(tokens) != len(self._next_positions):
            raise ValueError(f"{len(tokens)} tokens for {len(self._next_positions)} started rows")
        fed = torch.tensor([token is not None for token in tokens], device=self.device)
        if bool((self._next_positions[fed] >= cache.length).any()):
            raise ValueError("the sequence is already as long as its cache")
        ids = torch.tensor([token or 0 for token in tokens], dtype=torch.long, device=self.device)
        logits = self.step_rows_on_device(ids, fed)
        return logits.to("cpu", torch.float32, copy=True)  # a replay rewrites its output

    @torch.inference_mode()
    def step_rows_on_device(self, tokens: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (started rows,) to the rows where ``fed`` (a row not fed is finished:
        it rewrites its last position, which nothing reads any more); the logits for the position
        after each (on the device, (rows, candidates); a finished row's are meaningless; a replay
        rewrites them at the next step). Nothing is read back to the host."""
        cache = self._started()
        started = tokens.shape[0]
        cache.tokens[:started, 0] = tokens
        cache.positions[:started, 0] = self._next_positions.clamp_max(cache.length - 1)
        self._next_positions = self._next_positions + fed.long()
        logits = self._replayed(cache)
        if logits is None:
            logits = self._forward(cache.keys, cache.values, cache.tokens, cache.positions)
        return logits[:started]

    def _started(self) -> _Cache:
        if self._cache is None:
            raise RuntimeError("start_rows() before stepping")
        return self._cache

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
            # Each run writes this step's keys and values at the same positions: repeating it is harmless.
            return self._forward(cache.keys, cache.values, cache.tokens, cache.positions)

        try:
            cache.replay, cache.output = capture_checked(self._backend, run)
        except CaptureRefused as refusal:
            cache.eager_reason = str(refusal)
            logger.warning(
                "prompt expansion runs without a CUDA graph for {} tokens: {}", cache.length, refusal
            )
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
        shape = (self.rows, heads, length, int(config.n_embd) // heads)
        weight = self.model.lm_head.weight
        layers = range(int(config.n_layer))
        cache = _Cache(
            keys=[torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in layers],
            values=[torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in layers],
            tokens=torch.zeros((self.rows, 1), dtype=torch.long, device=weight.device),
            positions=torch.zeros((self.rows, 1), dtype=torch.long, device=weight.device),
        )
        self._caches[length] = cache
        return cache

    def _forward(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        tokens: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """The candidates' logits after each row's last token, writing the keys and values of
        ``tokens`` (rows, steps) at ``positions`` (rows, steps) into each layer's ``keys``/``values``
        (rows, heads, length, width); each position attends to its row's cache up to itself."""
        transformer = self.model.transformer
        length = keys[0].shape[2]
        # (rows, steps, cache length): a query sees its row's cached positions up to its own.
        visible = torch.arange(length, device=positions.device) <= positions[..., None]
        hidden = transformer.wte(tokens) + transformer.wpe(positions)
        for index, block in enumerate(transformer.h):
            attended = _attention(
                block.attn, block.ln_1(hidden), keys[index], values[index], positions, visible
            )
            hidden = hidden + attended
            hidden = hidden + block.mlp(block.ln_2(hidden))
        last = transformer.ln_f(hidden[:, -1])
        return functional.linear(last, self._head_weight, self._head_bias)


def _attention(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    """One GPT-2 self-attention over the static cache: project, store the steps' keys and values at
    their rows' ``positions``, attend, project back."""
    heads, width = keys.shape[1], keys.shape[3]
    rows, steps = hidden.shape[0], hidden.shape[1]
    query, key, value = attn.c_attn(hidden).split(heads * width, dim=2)
    split = (rows, steps, heads, width)
    query = query.view(split).transpose(1, 2)
    # Each row's steps go to its own positions: (rows, heads, steps, width) scattered along the length.
    where = positions[:, None, :, None].expand(rows, heads, steps, width)
    keys.scatter_(2, where, key.view(split).transpose(1, 2))
    values.scatter_(2, where, value.view(split).transpose(1, 2))
    attended = functional.scaled_dot_product_attention(
        query, keys, values, attn_mask=visible[:, None], scale=_scaling(attn, width)
    )
    merged = attended.transpose(1, 2).reshape(rows, steps, heads * width)
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
