"""Prompt weights: ``(word)``, ``(word:1.5)``, ``\\(`` escapes, 77-token chunks and the weighting maths.

Syntax (as Fooocus reads it):
- ``(text)`` multiplies the surrounding weight by 1.1; nesting multiplies again: ``((text))`` = 1.21.
- ``(text:1.5)`` sets the weight to 1.5, whatever surrounds it.
- ``\\(`` and ``\\)`` are literal parentheses. An unmatched parenthesis is literal too.
- ``BREAK`` (A1111's keyword, in capitals, as a word of its own) ends the current 77-token chunk:
  the text after it starts a new one. Recipes pasted from A1111 and civitai use it; Fooocus reads
  it as the word "break".

Maths (A1111 style): a weighted token embedding ``z`` becomes ``z_empty + w·(z − z_empty)``, where
``z_empty`` is the same position in the encoding of the empty prompt; then the chunk is scaled so
its mean is what it was before weighting. Chunks without weights are left exactly as encoded.

Long prompts: the tokens are cut into chunks of 75, each framed as BOS + tokens + EOS + padding to
77, encoded on its own; the caller concatenates the chunks along the sequence axis.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

NESTING_FACTOR = 1.1
CHUNK_LENGTH = 77
TOKENS_PER_CHUNK = CHUNK_LENGTH - 2  # BOS and EOS frame each chunk

_EXPLICIT_WEIGHT = re.compile(r":\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")
_ESCAPABLE = "()"
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
BREAK_ID = -1
"""Stands in a token list for ``BREAK``: ``chunk_tokens`` starts a new chunk there."""


@dataclass(frozen=True)
class WeightedSpan:
    """A run of prompt text (escapes already resolved) that shares one weight."""

    text: str
    weight: float
    chunk_break: bool = False
    """A ``BREAK`` (no text): the next span starts a new 77-token chunk."""


@dataclass(frozen=True)
class TokenChunk:
    """One 77-token block: token ids and one weight per position (1.0 for BOS/EOS/padding)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]

    @property
    def weighted(self) -> bool:
        return any(weight != 1.0 for weight in self.weights)


# -- parsing -----------------------------------------------------------------------------------


def parse_weights(text: str) -> list[WeightedSpan]:
    """Split ``text`` into spans of equal weight; neighbours with the same weight are merged.

    A prompt without weights gives one span holding the whole text (or none for ``""``).
    """
    closing = _matching_parentheses(text)
    spans: list[WeightedSpan] = []
    _collect(text, 0, len(text), 1.0, closing, spans)
    return _merge(_with_breaks(spans))


def weighted_tokens(
    spans: Sequence[WeightedSpan], tokenize: Callable[[str], list[int]]
) -> list[tuple[int, float]]:
    """(token id, weight) for each token of ``spans``, with ``BREAK_ID`` where a ``BREAK`` stands."""
    tokens: list[tuple[int, float]] = []
    for span in spans:
        if span.chunk_break:
            tokens.append((BREAK_ID, 1.0))
        else:
            tokens.extend((token, span.weight) for token in tokenize(span.text))
    return tokens


def has_weights(spans: Sequence[WeightedSpan]) -> bool:
    return any(span.weight != 1.0 for span in spans)


def _matching_parentheses(text: str) -> dict[int, int]:
    """Index of each unescaped ``(`` that has a matching ``)`` → index of that ``)``."""
    pairs: dict[int, int] = {}
    open_at: list[int] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in _ESCAPABLE:
            index += 2
            continue
        if char == "(":
            open_at.append(index)
        elif char == ")" and open_at:
            pairs[open_at.pop()] = index
        index += 1
    return pairs


def _collect(
    text: str, start: int, end: int, weight: float, closing: dict[int, int], out: list[WeightedSpan]
) -> None:
    plain: list[str] = []

    def flush() -> None:
        if plain:
            out.append(WeightedSpan("".join(plain), weight))
            plain.clear()

    index = start
    while index < end:
        char = text[index]
        if char == "\\" and index + 1 < end and text[index + 1] in _ESCAPABLE:
            plain.append(text[index + 1])
            index += 2
        elif char == "(" and index in closing:
            flush()
            close = closing[index]
            inner = text[index + 1 : close]
            explicit = _EXPLICIT_WEIGHT.search(inner)
            if explicit is not None:
                _collect(
                    text, index + 1, index + 1 + explicit.start(), float(explicit.group(1)), closing, out
                )
            else:
                _collect(text, index + 1, close, weight * NESTING_FACTOR, closing, out)
            index = close + 1
        else:
            plain.append(char)
            index += 1
    flush()


def _with_breaks(spans: list[WeightedSpan]) -> list[WeightedSpan]:
    """Each ``BREAK`` inside a span's text as a span of its own."""
    split: list[WeightedSpan] = []
    for span in spans:
        for index, part in enumerate(_BREAK.split(span.text)):
            if index:
                split.append(WeightedSpan("", 1.0, chunk_break=True))
            split.append(WeightedSpan(part, span.weight))
    return split


def _merge(spans: list[WeightedSpan]) -> list[WeightedSpan]:
    merged: list[WeightedSpan] = []
    for span in spans:
        if span.chunk_break:
            merged.append(span)
            continue
        if not span.text:
            continue
        if merged and not merged[-1].chunk_break and merged[-1].weight == span.weight:
            merged[-1] = WeightedSpan(merged[-1].text + span.text, span.weight)
        else:
            merged.append(span)
    return merged


# -- chunking ----------------------------------------------------------------------------------


def chunk_tokens(tokens: Sequence[tuple[int, float]], *, bos: int, eos: int, pad: int) -> list[TokenChunk]:
    """Cut (id, weight) pairs into 77-token chunks: BOS + up to 75 tokens + EOS + padding.

    A ``BREAK_ID`` ends the chunk it stands in (one that has tokens; a ``BREAK`` at the start or
    after another changes nothing). No tokens still give one chunk (the empty prompt), exactly as
    the tokenizer frames ``""``.
    """
    bodies: list[list[tuple[int, float]]] = [[]]
    for token in tokens:
        if token[0] == BREAK_ID:
            if bodies[-1]:
                bodies.append([])
            continue
        if len(bodies[-1]) == TOKENS_PER_CHUNK:
            bodies.append([])
        bodies[-1].append(token)
    if len(bodies) > 1 and not bodies[-1]:  # a BREAK at the end
        bodies.pop()
    chunks: list[TokenChunk] = []
    for body in bodies:
        padding = CHUNK_LENGTH - 2 - len(body)
        ids = (bos, *(token for token, _ in body), eos, *([pad] * padding))
        weights = (1.0, *(weight for _, weight in body), 1.0, *([1.0] * padding))
        chunks.append(TokenChunk(ids=ids, weights=weights))
    return chunks


def empty_chunk(*, bos: int, eos: int, pad: int) -> TokenChunk:
    """The chunk of the empty prompt, whose encoding is the weighting's reference point."""
    return chunk_tokens((), bos=bos, eos=eos, pad=pad)[0]


# -- maths -------------------------------------------------------------------------------------


def apply_token_weights(
    hidden: torch.Tensor, empty: torch.Tensor, chunks: Sequence[TokenChunk]
) -> torch.Tensor:
    """Weight the per-token embeddings of each chunk, keeping each weighted chunk's mean.

    ``hidden``: (chunks, 77, width), the encodings of ``chunks``; ``empty``: (1, 77, width) or
    (77, width), the encoding of the empty prompt. Unweighted chunks come back bit for bit.
    The arithmetic runs in float32 and the result has ``hidden``'s dtype.
    """
    if hidden.shape[0] != len(chunks):
        raise ValueError(f"{hidden.shape[0]} encoded chunks for {len(chunks)} token chunks")
    reference = empty.reshape(hidden.shape[1:]).float()
    out: list[torch.Tensor] = []
    for encoded, chunk in zip(hidden, chunks, strict=True):
        if not chunk.weighted:
            out.append(encoded)
            continue
        original = encoded.float()
        weights = torch.tensor(chunk.weights, dtype=torch.float32, device=encoded.device).unsqueeze(-1)
        weighted = torch.where(weights != 1.0, reference + weights * (original - reference), original)
        original_mean, new_mean = original.mean(), weighted.mean()
        if new_mean != 0:
            weighted = weighted * (original_mean / new_mean)
        out.append(weighted.to(encoded.dtype))
    return torch.stack(out)
