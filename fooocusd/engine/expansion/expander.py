"""``PromptExpander``: extends a prompt with curated words, sampled from a GPT-2-class model.

What it does, following Fooocus's documented behaviour ("Fooocus V2"):

1. The prompt is cleaned: runs of spaces collapse, and spaces, commas, full stops and line
   breaks are trimmed from both ends. The user's wording and case are kept. A comma is appended.
2. The cleaned prompt (with its comma) is L tokens long in the expansion tokenizer. New tokens
   are generated until the text is ``75 * ceil(L / 75)`` tokens long, the next 75-token boundary
   (a whole CLIP chunk). When L is already on a boundary nothing is added. The model's context
   length caps the target.
3. Each new token is drawn by top-k sampling (k = 100) among the tokens ``CuratedVocabulary``
   allows: curated words not yet in the text, and commas. If every curated word is used up
   before the boundary, generation stops there.
4. The added words that would carry the text past that chunk in CLIP's own tokens (the text
   encoders'; the expansion tokenizer counts differently) are dropped from the end
   (``fit_in_clip_chunks``): the expansion never costs another 77-token block.
5. Each prompt's random numbers come from a CPU ``torch.Generator`` seeded with ``seed % 2**32``
   (Fooocus reduces the image seed to numpy's range the same way), one uniform number per token it
   may add, drawn before the first step: the same prompt and seed always give the same text, on
   any device and beside any other prompts.

The model only computes logits, and only the candidates' (the curated words' tokens and the comma:
nothing else can be drawn). The vocabulary rule, top-k and the draw (inverse CDF of the softmax at
the prompt's uniform number) run where the logits are (``sampling.DrawRows``), and the drawn token
is fed back into the next step there: no copy to the host per token, one at the end. A GPT-2 model
runs over a preallocated key/value cache with one CUDA graph per cache length on a GPU
(``static_step.py``), so an expansion is a run of graph replays and small sampling kernels that the
host queues without waiting; any other causal language model runs through its own forward with a
growing cache.

``expand_many`` expands several prompts at once: those of one target length share the static step's
rows (four on a GPU), each with its own random numbers, so a step advances them all and each gets
the text it gets alone.

Expansions run one call at a time, from any thread. On a CUDA GPU they run on the expander's own stream,
so the final copy of the drawn tokens waits for the expansion's kernels only, not for a render that
another thread has queued on the default stream; and they hold ``graph_capture.CAPTURE_LOCK``, so an
expansion prepared ahead never overlaps a graph capture.

``expand`` returns the **full expanded prompt** (the cleaned prompt, a comma, the added words),
which is what Fooocus encodes as the last positive workload; ``expand_parts`` also returns the
added words on their own and the token counts (``generated_ids``: every token sampled, dropped
words included).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fooocusd.engine.clip_tokens import clip_chunks
from fooocusd.engine.expansion.sampling import DrawRows, RowPrompt
from fooocusd.engine.expansion.static_step import StaticGPT2, supports
from fooocusd.engine.expansion.tiny import build_tiny_model, build_tiny_tokenizer
from fooocusd.engine.expansion.vocabulary import CuratedVocabulary, comma_token_id, word_token_ids
from fooocusd.engine.expansion.words import allowed_words, load_word_list
from fooocusd.engine.graph_capture import CAPTURE_LOCK, CudaGraphBackend, GraphBackend
from fooocusd.engine.weighting import TOKENS_PER_CHUNK
from fooocusd.errors import ConfigError, OutOfMemory

TOP_K = 100
SEED_RANGE = 2**32
TINY_RANDOM = "tiny-random"
_SPACE_RUNS = re.compile(r" {2,}")


@dataclass(frozen=True)
class Expansion:
    """One expansion. ``text`` is the full expanded prompt; ``added`` the new words alone."""

    prompt: str
    added: str
    text: str
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    target_tokens: int


def clean_expansion_text(text: str) -> str:
    """Collapse runs of spaces; trim spaces, commas, full stops and line breaks from both ends."""
    return _SPACE_RUNS.sub(" ", text).strip(",. \r\n")


def next_chunk_boundary(tokens: int) -> int:
    """The next multiple of 75 at or above ``tokens``."""
    return TOKENS_PER_CHUNK * math.ceil(tokens / TOKENS_PER_CHUNK)


def joined(prompt: str, added: str) -> str:
    return f"{prompt}, {added}" if added else prompt


def fit_in_clip_chunks(prompt: str, added: str) -> str:
    """The most of ``added``'s leading words with which the expanded prompt takes no more CLIP chunks
    than ``prompt`` alone.

    The expansion model's tokenizer is not CLIP's: 75 of its tokens are often 76-90 CLIP tokens, and
    the few words past the chunk would cost the text encoders and every cross-attention a nearly
    empty 77-token block, and put the image in another batch class (``batching.sequence_class``)
    than its neighbours."""
    if not added:
        return added
    limit = clip_chunks(prompt)
    words = added.split(" ")

    def fits(count: int) -> bool:  # in chunks, not tokens: a BREAK in the prompt starts one early
        return clip_chunks(joined(prompt, clean_expansion_text(" ".join(words[:count])))) <= limit

    if fits(len(words)):
        return added
    low, high = 0, len(words)  # fits(low), not fits(high): CLIP counts each word on its own
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return clean_expansion_text(" ".join(words[:low]))


class PromptExpander:
    """A tokenizer and causal language model that add curated words to prompts."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel,
        *,
        name: str,
        words: tuple[str, ...] | None = None,
        top_k: int = TOP_K,
        graph_backend: GraphBackend | None = None,
    ) -> None:
        """``graph_backend``: records the GPT-2 step as a graph (``CudaGraphBackend`` on a GPU)."""
        self.name = name
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.top_k = top_k
        vocab_size = int(model.get_output_embeddings().weight.shape[0])
        if len(tokenizer) > vocab_size:
            raise ConfigError(
                f"the expansion tokenizer of {name} has {len(tokenizer)} tokens but its model only "
                f"{vocab_size}",
                where=name,
                hint="use a folder whose tokenizer and model belong together (a GPT-2-compatible model)",
            )
        self.word_ids = word_token_ids(tokenizer, allowed_words(words or load_word_list()))
        if not self.word_ids:
            raise ConfigError(
                f"the expansion tokenizer of {name} spells none of the curated words as one token",
                where=name,
                hint="use a GPT-2-compatible model (byte-level BPE with a leading-space marker)",
            )
        self.vocabulary = CuratedVocabulary(self.word_ids.values(), comma_token_id(tokenizer), vocab_size)
        self._candidate_ids = torch.tensor(self.vocabulary.candidate_ids, device=self.device)
        positions = getattr(model.config, "n_positions", None) or getattr(
            model.config, "max_position_embeddings", None
        )
        self.max_tokens = int(positions) if positions else 1024
        candidates = self.vocabulary.candidate_ids
        self.static_step = (
            StaticGPT2(self.model, graph_backend, candidates) if not supports(self.model) else None
        )
        self._lock = threading.Lock()
        self._stream: torch.cuda.Stream | None = None
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(self.device)
            torch.cuda.current_stream(self.device).synchronize()  # the weights' copies have landed

    @classmethod
    def from_folder(
        cls, folder: Path, *, device: torch.device, dtype: torch.dtype, words: tuple[str, ...] | None = None
    ) -> PromptExpander:
        """Load a local GPT-2-compatible folder (config.json, weights, tokenizer files), offline."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(
                f"cannot load the prompt expansion model in {folder}: {exc}",
                where=str(folder),
                hint="the folder needs config.json, the weights (model.safetensors) and the tokenizer "
                "files of a GPT-2-compatible model, e.g. from `hf download openai-community/gpt2 "
                "config.json model.safetensors tokenizer.json tokenizer_config.json vocab.json merges.txt "
                f"--local-dir {folder}`",
            ) from exc
        backend = CudaGraphBackend(device) if device.type == "cuda" else None
        return cls(tokenizer, model.to(device), name=str(folder), words=words, graph_backend=backend)

    @classmethod
    def tiny_random(cls, *, device: torch.device | None = None) -> PromptExpander:
        """The built-in tiny random model: noise words, the whole code path."""
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(len(tokenizer))
        return cls(tokenizer, model.to(device or torch.device("cpu")), name=TINY_RANDOM)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def expand(self, prompt: str, seed: int) -> str:
        """The full expanded prompt; an empty prompt stays empty."""
        return self.expand_parts(prompt, seed).text

    def expand_parts(self, prompt: str, seed: int) -> Expansion:
        return self.expand_many([(prompt, seed)])[0]

    def expand_many(self, items: Sequence[tuple[str, int]]) -> list[Expansion]:
        """``expand_parts`` for each (prompt, seed), in order. Prompts of the same target length run
        together, as many at a time as the static GPT-2 step has rows (4 on a GPU; each step
        advances all of them); each text is the same as it would be alone."""
        plans = [self._plan(prompt, seed) for prompt, seed in items]
        generated: dict[int, tuple[int, ...]] = {}
        waiting = [index for index, plan in enumerate(plans) if plan.new_tokens > 0]
        by_target = sorted(waiting, key=lambda index: plans[index].target)
        per_step = self.static_step.rows if self.static_step is not None else 1
        for _target, group in itertools.groupby(by_target, key=lambda index: plans[index].target):
            indices = list(group)
            for start in range(0, len(indices), per_step):
                rows = indices[start : start + per_step]
                for index, tokens in zip(rows, self._sample([plans[i] for i in rows]), strict=True):
                    generated[index] = tokens
        return [self._expansion(plan, generated.get(index, ())) for index, plan in enumerate(plans)]

    def _plan(self, prompt: str, seed: int) -> _Plan:
        cleaned = clean_expansion_text(prompt)
        if not cleaned:
            return _Plan(cleaned="", prompt_ids=(), target=0, seed=seed)
        prompt_ids = tuple(int(i) for i in self.tokenizer(cleaned + ",")["input_ids"])
        target = min(next_chunk_boundary(len(prompt_ids)), self.max_tokens)
        return _Plan(cleaned=cleaned, prompt_ids=prompt_ids, target=target, seed=seed)

    def _expansion(self, plan: _Plan, generated: tuple[int, ...]) -> Expansion:
        if not plan.cleaned:
            return Expansion(prompt="", added="", text="", prompt_ids=(), generated_ids=(), target_tokens=0)
        decoded = self.tokenizer.decode(
            list(generated), skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        added = fit_in_clip_chunks(plan.cleaned, clean_expansion_text(decoded))
        return Expansion(
            prompt=plan.cleaned,
            added=added,
            text=joined(plan.cleaned, added),
            prompt_ids=plan.prompt_ids,
            generated_ids=generated,
            target_tokens=plan.target,
        )

    def _sample(self, plans: list[_Plan]) -> list[tuple[int, ...]]:
        """The tokens drawn for prompts of one target length, one per row of the static step
        (one prompt at a time through the model's own forward)."""
        try:
            with self._running(), torch.inference_mode():
                prompts = [RowPrompt(p.prompt_ids, p.new_tokens, int(p.seed) % SEED_RANGE) for p in plans]
                rows = DrawRows.start(self.vocabulary, prompts, self.top_k, self.device)
                if self.static_step is None:
                    (plan,) = plans
                    growing = _GrowingCacheSteps(self.model, self.vocabulary.candidate_ids)
                    self._draw(rows, growing.start(plan.prompt_ids), lambda tokens, fed: growing.step(tokens))
                else:
                    steps = self.static_step
                    logits = steps.start_rows_on_device([plan.prompt_ids for plan in plans], plans[0].target)
                    self._draw(rows, logits, steps.step_rows_on_device)
                return rows.drawn_tokens(self.vocabulary.candidate_ids)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(
                "the accelerator ran out of memory during prompt expansion",
                hint='the job is retried; free memory or set engine.expansion = "off"',
            ) from exc

    def _draw(
        self, rows: DrawRows, logits: torch.Tensor, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        """Every token on the device: the draw from ``logits``, then the model's ``step`` (a CUDA
        graph replay for GPT-2 on a GPU) on the drawn tokens and the rows still drawing, with nothing
        copied to the host until the end. (A row that stopped early feeds tokens nothing reads.)"""
        for index in range(rows.steps):
            drawn = rows.draw(logits, index)
            if index + 1 < rows.steps:
                logits = step(self._candidate_ids[drawn], rows.drawing())

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """One expansion at a time; on a CUDA GPU on the expander's stream, never beside a capture."""
        with self._lock:
            if self._stream is None:
                yield
                return
            with CAPTURE_LOCK, torch.cuda.stream(self._stream):
                yield


@dataclass(frozen=True)
class _Plan:
    """One prompt's expansion before sampling: the cleaned text, its ids and the length to reach."""

    cleaned: str
    prompt_ids: tuple[int, ...]
    target: int
    seed: int

    @property
    def new_tokens(self) -> int:
        return max(0, self.target - len(self.prompt_ids))


class _GrowingCacheSteps:
    """Next-token logits through the model's own forward and growing cache (any causal LM), one
    sequence, on the model's device: (1, candidates) each."""

    def __init__(self, model: PreTrainedModel, candidates: tuple[int, ...]) -> None:
        self.model = model
        self._cache_name = cache_argument(model)
        self._cache: Any = None
        self._candidates = torch.tensor(candidates, device=next(model.parameters()).device)

    def start(self, prompt_ids: tuple[int, ...]) -> torch.Tensor:
        self._cache = None
        device = next(self.model.parameters()).device
        return self._logits(torch.tensor([prompt_ids], dtype=torch.long, device=device))

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """The logits after ``token``, a (1,) tensor on the model's device."""
        return self._logits(token[:, None])

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        output = self.model(input_ids=inputs, use_cache=True, **{self._cache_name: self._cache})
        self._cache = getattr(output, self._cache_name)
        logits: torch.Tensor = output.logits[:, -1, self._candidates]
        return logits


def cache_argument(model: Any) -> str:
    """The key-value cache's argument (and output field) name: ``cache`` from transformers 5.2x on,
    ``past_key_values`` before."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
