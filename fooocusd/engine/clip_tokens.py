"""How many CLIP tokens and 75-token chunks a prompt takes, counted without a loaded model.

Every SD 1.x and SDXL checkpoint uses the same CLIP BPE vocabulary, shipped with fooocusd, so
batching (``batching.sequence_class``) and prompt expansion (which must not spill into another
chunk) can count before any model is loaded. Weighted spans (``(word:1.3)``) are counted as the
encoder sees them: their text without the weight syntax (``embedding:name`` is counted as text).
"""

from __future__ import annotations

import functools

from transformers import CLIPTokenizer

from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.weighting import BREAK_ID, chunk_tokens, parse_weights, weighted_tokens


@functools.lru_cache(maxsize=1)
def shipped_clip_tokenizer() -> CLIPTokenizer:
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer", local_files_only=True)
    tokenizer.model_max_length = 1 << 30  # we count long prompts, never feed them: no length warning
    return tokenizer


def clip_token_count(text: str) -> int:
    """CLIP tokens of ``text`` without the begin and end tokens (a ``BREAK`` counts none)."""
    return sum(1 for token, _ in _tokens(text) if token != BREAK_ID)


def clip_chunks(text: str) -> int:
    """77-token blocks the text encoders run for ``text`` (at least one, for an empty prompt too)."""
    return len(chunk_tokens(_tokens(text), bos=0, eos=0, pad=0))


def _tokens(text: str) -> list[tuple[int, float]]:
    tokenizer = shipped_clip_tokenizer()
    return weighted_tokens(
        parse_weights(text), lambda span: tokenizer(span, add_special_tokens=False, verbose=False).input_ids
    )
