"""How many CLIP tokens and 75-token chunks a prompt takes, counted without a loaded model.

Every SD 1.x and SDXL checkpoint uses the same CLIP BPE vocabulary, shipped with fooocusd, so
batching (``batching.sequence_class``) and prompt expansion (which must not spill into another
chunk) can count before any model is loaded. Weighted spans (``(word:1.3)``) are counted as the
encoder sees them: their text without the weight syntax (``embedding:name`` is counted as text).
"""

from __future__ import annotations

import functools
import math

from transformers import CLIPTokenizer

from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.weighting import TOKENS_PER_CHUNK, parse_weights


@functools.lru_cache(maxsize=1)
def shipped_clip_tokenizer() -> CLIPTokenizer:
    tokenizer = CLIPTokenizer.from_pretrained(SDXL_CONFIG_DIR / "tokenizer", local_files_only=True)
    tokenizer.model_max_length = 1 << 30  # we count long prompts, never feed them: no length warning
    return tokenizer


def clip_token_count(text: str) -> int:
    """CLIP tokens of ``text`` without the begin and end tokens."""
    tokenizer = shipped_clip_tokenizer()
    return sum(
        len(tokenizer(span.text, add_special_tokens=False, verbose=False).input_ids)
        for span in parse_weights(text)
    )


def clip_chunks(text: str) -> int:
    """77-token blocks the text encoders run for ``text`` (at least one, for an empty prompt too)."""
    return max(1, math.ceil(clip_token_count(text) / TOKENS_PER_CHUNK))
