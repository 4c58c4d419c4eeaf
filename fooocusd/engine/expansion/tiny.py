"""``engine.expansion = "tiny-random"``: a tiny random-weight GPT-2 and a small tokenizer, built in code.

The tokenizer is a byte-level BPE, like GPT-2's, whose merges spell each curated word (with its
leading space) as one token, so every word of the list is a candidate; any other text still
encodes, byte by byte. The model has GPT-2's architecture at a few thousand parameters per layer,
with weights from a fixed seed. It writes noise words, but it runs the whole expansion path
(tokenising, constrained top-k sampling, the 75-token rule, metadata) in milliseconds on a CPU.
Nothing is downloaded.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from fooocusd.engine.expansion.words import allowed_words, load_word_list

TINY_EXPANSION_SEED = 20_240_301
END_OF_TEXT = "<|endoftext|>"
SPACE_MARK = "Ġ"  # how byte-level BPE writes a leading space
TINY_POSITIONS = 1024
TINY_WIDTH = 32


def build_tiny_tokenizer(words: tuple[str, ...] | None = None) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE whose vocabulary holds each curated (alphabetic) word as one token."""
    vocabulary: dict[str, int] = {}
    for symbol in [END_OF_TEXT, *sorted(pre_tokenizers.ByteLevel.alphabet())]:
        vocabulary.setdefault(symbol, len(vocabulary))
    merges: list[tuple[str, str]] = []
    for word in words if words is not None else allowed_words(load_word_list()):
        if not (word.isascii() and word.isalpha()):
            continue  # GPT-2's pre-tokeniser splits letters from digits and symbols anyway
        # Only merges "Ġprefix + next letter" exist, so a word is always merged left to right.
        prefix = SPACE_MARK
        for letter in word:
            if prefix + letter not in vocabulary:
                merges.append((prefix, letter))
                vocabulary[prefix + letter] = len(vocabulary)
            prefix += letter
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )


def build_tiny_model(vocab_size: int) -> GPT2LMHeadModel:
    """A deterministic GPT-2 of two narrow layers; the same weights on every call."""
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=TINY_POSITIONS,
        n_embd=TINY_WIDTH,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_EXPANSION_SEED)
        model = GPT2LMHeadModel(config)
    return model.eval()
