"""The logits processor that keeps expansion inside the curated vocabulary.

Only the candidates (the curated words' tokens and the comma, ``CuratedVocabulary.candidate_ids``)
can ever be sampled, so the expander computes and samples their logits alone: a few hundred
scores per token instead of the model's whole vocabulary (50,257 for GPT-2). At each step only
these tokens may be sampled:

* tokens of the curated words (each word with its leading space, as one token of the expansion
  tokenizer), unless the token is already in the sequence, prompt included (no repeats);
* the comma, always, except straight after another comma: a random or weak model would
  otherwise fill the text with ``, , ,`` runs, which add tokens but no meaning.

End-of-text is never allowed, so the text grows to its target length unless the words run out.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase


class CuratedVocabulary(LogitsProcessor):
    """Masks the scores of every token outside the curated vocabulary (``-inf``).

    ``vocab_size`` is the width of the model's scores, which may exceed the tokenizer's.
    """

    def __init__(self, word_token_ids: Iterable[int], comma_id: int, vocab_size: int) -> None:
        self.comma_id = comma_id
        self.word_token_ids = frozenset(word_token_ids) - {comma_id}
        self.vocab_size = vocab_size
        self._word_mask = torch.zeros(vocab_size, dtype=torch.bool)
        self._word_mask[sorted(self.word_token_ids)] = True
        self.candidate_ids: tuple[int, ...] = tuple(sorted({*self.word_token_ids, comma_id}))
        """Every token that may ever be sampled, ascending: the words' tokens and the comma."""
        self.candidate_index = {token: index for index, token in enumerate(self.candidate_ids)}

    def allowed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """A boolean mask, shape (batch, vocab): which tokens may come next."""
        word_mask = self._word_mask.to(input_ids.device)
        allowed = word_mask.unsqueeze(0).repeat(input_ids.shape[0], 1)
        allowed.scatter_(1, input_ids, False)  # no token repeats, the prompt's included
        allowed[:, self.comma_id] = input_ids[:, -1] != self.comma_id
        return allowed

    def words_left(self, input_ids: torch.Tensor) -> bool:
        """Whether any unused curated word remains for every row."""
        allowed = self.allowed(input_ids)
        allowed[:, self.comma_id] = False
        return bool(allowed.any(dim=1).all())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(~self.allowed(input_ids), float("-inf"))  # type: ignore[return-value]


def word_token_ids(tokenizer: PreTrainedTokenizerBase, words: Iterable[str]) -> dict[str, int]:
    """word → token id, for each word that the tokenizer spells as one token after a space."""
    found: dict[str, int] = {}
    for word in words:
        ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            found[word] = int(ids[0])
    return found


def comma_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    ids = tokenizer(",", add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError("the expansion tokenizer has no single token for ','")
    return int(ids[0])
