"""What the SDXL UNet is conditioned on: prompt embeddings per workload and the ADM size ids.

Workloads: Fooocus encodes each prompt line (main prompt, extra lines, style lines) on its own with
both CLIP encoders and concatenates the 77-token blocks along the sequence axis; the pooled vector
comes from the first workload. A workload may use weights (``(word:1.3)``) and may run past 75
tokens, taking several 77-token blocks (``weighting.py``); an unweighted workload of at most 75
tokens is exactly diffusers' ``encode_prompt``.

CLIP skip uses Fooocus/ComfyUI numbering: 1 = the last layer, 2 = the penultimate one (SDXL's
standard). diffusers counts from the penultimate layer instead: its ``clip_skip`` = ours − 2, with
``None`` meaning ours = 2. We index the hidden states ourselves, on both the positive and the
negative side (diffusers applies its ``clip_skip`` to the positive side only).

ADM ids (SDXL micro-conditioning, six numbers per sample: original h, w, crop top, left, target h,
w): "emphasized" ids claim an original size scaled by 1.5 (positive) or 0.8 (negative); the
"consistent" ids have original = target. Fooocus uses the emphasized ones early (t > 999·(1 − end)).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline
from transformers import PreTrainedTokenizerBase

from fooocusd.engine.base import GenerationRequest
from fooocusd.engine.encoder_graphs import EncoderGraphs, EncoderOutputs, encoder_outputs
from fooocusd.engine.encoding_cache import EncodingCache
from fooocusd.engine.guidance import LAST_TRAINING_TIMESTEP
from fooocusd.engine.weighting import (
    TokenChunk,
    WeightedSpan,
    apply_token_weights,
    chunk_tokens,
    empty_chunk,
    parse_weights,
    weighted_tokens,
)
from fooocusd.errors import InvalidInput


@dataclass(frozen=True)
class PromptEmbeddings:
    """One side (positive or negative) of the text conditioning."""

    tokens: torch.Tensor  # (images, 77 · blocks, width of CLIP-L + CLIP-G); a long workload takes several
    pooled: torch.Tensor  # (images, CLIP-G projection width), from the first workload

    @property
    def workloads(self) -> int:
        return self.tokens.shape[1] // _TOKENS_PER_WORKLOAD


@dataclass(frozen=True)
class AdmTimeIds:
    """SDXL added time ids, each of shape (images, 6)."""

    emphasized_positive: torch.Tensor
    emphasized_negative: torch.Tensor
    consistent: torch.Tensor


@dataclass(frozen=True)
class Conditioning:
    """Everything the denoising loop feeds the UNet besides the latents and the timestep."""

    positive: PromptEmbeddings
    negative: PromptEmbeddings | None  # None: CFG 1.0, no unconditional pass
    time_ids: AdmTimeIds


_TOKENS_PER_WORKLOAD = 77


def prompt_workloads(request: GenerationRequest) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(positive, negative) workloads for ``request``; each has at least one (maybe empty) string.

    The worker may fill ``positive_workloads``/``negative_workloads``; otherwise they are the
    non-empty lines of ``prompt`` + ``extra_prompts`` and of ``negative``.
    """
    positive = request.positive_workloads or _non_empty_lines((request.prompt, *request.extra_prompts))
    negative = request.negative_workloads or _non_empty_lines((request.negative,))
    return positive or ("",), negative or ("",)


def _non_empty_lines(texts: Sequence[str]) -> tuple[str, ...]:
    return tuple(line.strip() for text in texts for line in text.splitlines() if line.strip())


def encode_workloads(
    pipeline: StableDiffusionXLPipeline,
    workloads: Sequence[str],
    *,
    clip_skip: int,
    device: torch.device,
    cache: EncodingCache | None = None,
    encoder_state: Hashable = (),
    graphs: EncoderGraphs | None = None,
) -> PromptEmbeddings:
    """Encode each workload with both text encoders; token blocks concatenated in order.

    A workload may carry weights (``(word:1.3)``) and may be longer than 75 tokens: it then takes
    several 77-token blocks (see ``weighting.py``). The pooled vector is the first block's.
    ``cache`` keeps each workload's encoding for later images; ``encoder_state`` names what else
    changes the text encoders' output for the pipeline it is attached to (the active LoRAs).
    ``graphs`` replays the encoders' calls as CUDA graphs where it can.
    """
    if not workloads:
        raise ValueError("at least one workload is needed (use [''] for an empty prompt)")
    check_clip_skip(pipeline, clip_skip)
    state = (encoder_state, len(pipeline.tokenizer), len(pipeline.tokenizer_2))  # embeddings add tokens
    blocks: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for text in workloads:
        if cache is None:
            block, block_pooled = _encode_one(pipeline, text, clip_skip, graphs)
        else:
            block, block_pooled = cache.encoded(
                ("sdxl", text, clip_skip, state),
                lambda text=text: _encode_one(pipeline, text, clip_skip, graphs),
            )
        blocks.append(block)
        if pooled is None:
            pooled = block_pooled
    assert pooled is not None
    dtype = pipeline.text_encoder_2.dtype
    return PromptEmbeddings(
        tokens=torch.cat(blocks, dim=1).to(dtype=dtype, device=device),
        pooled=pooled.to(dtype=dtype, device=device),
    )


def _encode_one(
    pipeline: StableDiffusionXLPipeline, text: str, clip_skip: int, graphs: EncoderGraphs | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One workload: weighted, in as many 77-token chunks as it needs, both encoders side by side."""
    spans = parse_weights(text)
    chunks_per_encoder = [
        _token_chunks(pipeline, tokenizer, spans) for tokenizer in (pipeline.tokenizer, pipeline.tokenizer_2)
    ]
    chunk_count = max(len(chunks) for chunks in chunks_per_encoder)
    hidden: list[torch.Tensor] = []
    pooled: torch.Tensor | None = None
    for tokenizer, encoder, chunks in zip(
        (pipeline.tokenizer, pipeline.tokenizer_2),
        (pipeline.text_encoder, pipeline.text_encoder_2),
        chunks_per_encoder,
        strict=True,
    ):
        empty = empty_chunk(**_special_ids(tokenizer))
        chunks = chunks + [empty] * (chunk_count - len(chunks))  # both encoders need as many chunks
        # One chunk at a time: a batch may round differently, and the first block of a long prompt
        # must stay exactly what the prompt cut at 75 tokens gives.
        outputs = [_run_encoder(encoder, chunk, clip_skip, graphs) for chunk in chunks]
        first = outputs[0][1]
        if first.ndim == 2:  # CLIP-G's projected pooled vector: the first chunk's
            pooled = first
        encoded = torch.cat([hidden for hidden, _ in outputs])
        if any(chunk.weighted for chunk in chunks):
            reference = _run_encoder(encoder, empty, clip_skip, graphs)[0]
            encoded = apply_token_weights(encoded, reference, chunks)
        hidden.append(encoded.reshape(1, -1, encoded.shape[-1]))
    assert pooled is not None, "the second text encoder must return a pooled projection"
    return torch.cat(hidden, dim=-1), pooled


def _run_encoder(
    encoder: torch.nn.Module, chunk: TokenChunk, clip_skip: int, graphs: EncoderGraphs | None
) -> EncoderOutputs:
    ids = torch.tensor([chunk.ids], dtype=torch.long, device=encoder.device)
    if graphs is None:
        return encoder_outputs(encoder, ids, clip_skip)
    return graphs.outputs(encoder, ids, clip_skip)


def _token_chunks(
    pipeline: StableDiffusionXLPipeline, tokenizer: PreTrainedTokenizerBase, spans: list[WeightedSpan]
) -> list[TokenChunk]:
    def tokenize(text: str) -> list[int]:
        prompt = pipeline.maybe_convert_prompt(text, tokenizer)  # textual-inversion tokens, if any
        return tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids  # no length warning

    return chunk_tokens(weighted_tokens(spans, tokenize), **_special_ids(tokenizer))


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    return {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}


def check_clip_skip(pipeline: StableDiffusionXLPipeline, clip_skip: int) -> None:
    layers = min(
        pipeline.text_encoder.config.num_hidden_layers, pipeline.text_encoder_2.config.num_hidden_layers
    )
    if not 1 <= clip_skip <= layers:
        raise InvalidInput(
            f"clip_skip {clip_skip} is out of range for this model",
            where="clip_skip",
            hint=f"use 1 (last CLIP layer) to {layers}; 2 is SDXL's standard",
        )


def diffusers_clip_skip(clip_skip: int) -> int | None:
    """Our (Fooocus) clip skip as diffusers' ``encode_prompt(clip_skip=...)`` argument."""
    return None if clip_skip == 2 else clip_skip - 2


def adm_time_ids(
    height: int,
    width: int,
    *,
    positive_scale: float,
    negative_scale: float,
    dtype: torch.dtype,
    device: torch.device,
) -> AdmTimeIds:
    """Emphasized (original = size × scale) and consistent (original = size) ids; crop (0, 0)."""

    def ids(original_scale: float) -> torch.Tensor:
        values = [height * original_scale, width * original_scale, 0, 0, height, width]
        return torch.tensor([values], dtype=dtype, device=device)

    return AdmTimeIds(
        emphasized_positive=ids(positive_scale),
        emphasized_negative=ids(negative_scale),
        consistent=ids(1.0),
    )


def uses_emphasized_adm(timestep: float, adm_end: float, last_timestep: int = LAST_TRAINING_TIMESTEP) -> bool:
    """True while t > last · (1 − end): the first ``end`` share of the timestep range."""
    return float(timestep) > last_timestep * (1.0 - adm_end)


def match_sequence_lengths(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile both token sequences to their least common multiple length so they can share one batch.

    Cross-attention over a sequence repeated k times gives exactly the same result as over the
    sequence once (every key's softmax weight is split evenly over its k copies), so this changes
    nothing but the shapes.
    """
    first_length, second_length = first.shape[1], second.shape[1]
    if first_length == second_length:
        return first, second
    common = math.lcm(first_length, second_length)
    return first.repeat(1, common // first_length, 1), second.repeat(1, common // second_length, 1)


def stack_conditionings(items: Sequence[Conditioning]) -> Conditioning:
    """The conditionings of N images as one batch of N rows per side, for one denoising run.

    Token sequences (positive and negative of every image) are tiled to their common least
    multiple length, which changes nothing but the shapes (see ``match_sequence_lengths``); the
    ADM ids are the first image's, repeated: a batch shares its size and scalers.
    """
    if not items:
        raise ValueError("stack_conditionings needs at least one conditioning")
    if len(items) == 1:
        return items[0]
    if len({item.negative is None for item in items}) != 1:
        raise ValueError("a batch must use CFG for every image or for none")
    sides = [item.positive for item in items] + [item.negative for item in items if item.negative is not None]
    common = math.lcm(*(side.tokens.shape[1] for side in sides))

    def stacked(embeddings: Sequence[PromptEmbeddings]) -> PromptEmbeddings:
        return PromptEmbeddings(
            tokens=torch.cat([e.tokens.repeat(1, common // e.tokens.shape[1], 1) for e in embeddings]),
            pooled=torch.cat([e.pooled for e in embeddings]),
        )

    negatives = [item.negative for item in items if item.negative is not None]
    ids = items[0].time_ids
    rows = len(items)
    return Conditioning(
        positive=stacked([item.positive for item in items]),
        negative=stacked(negatives) if negatives else None,
        time_ids=AdmTimeIds(
            emphasized_positive=ids.emphasized_positive.repeat(rows, 1),
            emphasized_negative=ids.emphasized_negative.repeat(rows, 1),
            consistent=ids.consistent.repeat(rows, 1),
        ),
    )
