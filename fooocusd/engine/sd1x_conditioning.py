"""Prompt embeddings for SD 1.x / 2.x: one CLIP text encoder, the shared weighting and 77-token chunks.

Each workload (prompt line) is encoded on its own and the 77-token blocks are concatenated along the
sequence axis, exactly as for SDXL (``conditioning.py``); weights (``(word:1.3)``) and prompts past 75
tokens use ``weighting.py``. An unweighted workload of at most 75 tokens at CLIP skip 1 (SD 1.x) is
exactly ``StableDiffusionPipeline.encode_prompt``.

CLIP skip (Fooocus/ComfyUI/A1111 numbering, 1 = the last layer) picks a hidden state and, as A1111,
ComfyUI and diffusers do for these models, passes it through the encoder's final layer norm.
SD 2.x checkpoints are converted without OpenCLIP's last layer (the shipped config has 23 of its 24
layers, since SD 2.x was trained on the penultimate one), so for SD 2.x clip skip 2 — the default —
is the encoder's last layer as loaded, and clip skip 1 does not exist.

These UNets take no pooled text vector and no size ids (ADM guidance is SDXL-only): the
``Conditioning`` carries empty placeholders the noise predictor ignores.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch

from fooocusd.engine.conditioning import AdmTimeIds, Conditioning, PromptEmbeddings
from fooocusd.engine.encoding_cache import EncodingCache
from fooocusd.engine.weighting import (
    apply_token_weights,
    chunk_tokens,
    empty_chunk,
    parse_weights,
    weighted_tokens,
)
from fooocusd.errors import InvalidInput


def dropped_layers(family: str) -> int:
    """Text-encoder layers the converted checkpoint lacks at the end (SD 2.x: OpenCLIP's last one)."""
    return 1 if family == "sd2" else 0


def check_sd1x_clip_skip(text_encoder: Any, clip_skip: int, family: str) -> None:
    dropped = dropped_layers(family)
    first, last = 1 + dropped, text_encoder.config.num_hidden_layers + dropped
    if not first <= clip_skip <= last:
        standard = "2 is SD 2.x's standard (its last layer is not shipped)" if dropped else "1 is SD 1.5's"
        raise InvalidInput(
            f"clip_skip {clip_skip} is out of range for this model",
            where="clip_skip",
            hint=f"use {first} to {last}; {standard}",
        )


def encode_sd1x_workloads(
    pipeline: Any,
    workloads: Sequence[str],
    *,
    clip_skip: int,
    family: str,
    device: torch.device,
    cache: EncodingCache | None = None,
    encoder_state: Hashable = (),
) -> PromptEmbeddings:
    """Encode each workload with the pipeline's text encoder; token blocks concatenated in order.

    ``cache`` and ``encoder_state``: as for SDXL's ``encode_workloads``."""
    if not workloads:
        raise ValueError("at least one workload is needed (use [''] for an empty prompt)")
    encoder = pipeline.text_encoder
    check_sd1x_clip_skip(encoder, clip_skip, family)
    layer = clip_skip - dropped_layers(family)
    state = (encoder_state, len(pipeline.tokenizer))  # embeddings add tokens
    blocks = [
        _encode_one(pipeline, text, layer)
        if cache is None
        else cache.encoded(("sd1x", text, layer, state), lambda text=text: _encode_one(pipeline, text, layer))
        for text in workloads
    ]
    tokens = torch.cat(blocks, dim=1).to(dtype=encoder.dtype, device=device)
    return PromptEmbeddings(tokens=tokens, pooled=_placeholder(tokens))


def sd1x_conditioning(positive: PromptEmbeddings, negative: PromptEmbeddings | None) -> Conditioning:
    """A ``Conditioning`` whose size ids are empty: these UNets have no micro-conditioning."""
    empty = _placeholder(positive.tokens)
    ids = AdmTimeIds(emphasized_positive=empty, emphasized_negative=empty, consistent=empty)
    return Conditioning(positive=positive, negative=negative, time_ids=ids)


def _placeholder(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((1, 0), dtype=like.dtype, device=like.device)


def _encode_one(pipeline: Any, text: str, layer: int) -> torch.Tensor:
    tokenizer, encoder = pipeline.tokenizer, pipeline.text_encoder
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}

    def tokenize(span_text: str) -> list[int]:
        prompt = pipeline.maybe_convert_prompt(span_text, tokenizer)  # multi-vector embeddings
        return tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids

    chunks = chunk_tokens(weighted_tokens(parse_weights(text), tokenize), **special)
    # One chunk at a time, as for SDXL: the first block of a long prompt stays what the cut prompt gives.
    encoded = torch.cat([_hidden(encoder, chunk.ids, layer) for chunk in chunks])
    if any(chunk.weighted for chunk in chunks):
        reference = _hidden(encoder, empty_chunk(**special).ids, layer)
        encoded = apply_token_weights(encoded, reference, chunks)
    return encoded.reshape(1, -1, encoded.shape[-1])


def _hidden(encoder: Any, ids: Sequence[int], layer: int) -> torch.Tensor:
    tensor = torch.tensor([list(ids)], dtype=torch.long, device=encoder.device)
    output = encoder(tensor, output_hidden_states=True)
    # transformers >= 5.6 flattened CLIPTextModel; older versions keep the layers under ``text_model``.
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return final_norm(output.hidden_states[-layer])
