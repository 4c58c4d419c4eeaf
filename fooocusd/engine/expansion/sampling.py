"""The expansion's token draws for several prompts at once (rows), on the device of the logits.

Each step, for every row still drawing: the candidates that may not come next are removed
(``CuratedVocabulary``'s rule: curated words not yet in the text, the comma except straight after
another), then all but the top k, and one token is drawn from the softmax by inverse CDF: the first
candidate whose cumulative probability exceeds the row's uniform number for that step.

The uniform numbers come from each prompt's own CPU generator, seeded with its seed, all drawn
before the first step (one per token the prompt may add), so a prompt's text depends on its prompt
and seed only: not on its neighbours in the rows, not on the device, not on the path its logits
took. Everything else stays on the device: no copy to the host per token (on a GPU that copy, a
synchronisation, and the host's few dozen small operations per token cost more than the model's
step), one copy of the drawn tokens at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fooocusd.engine.expansion.vocabulary import CuratedVocabulary


@dataclass(frozen=True)
class RowPrompt:
    """What a row needs to draw: its prompt's tokens, how many it may add, and its seed."""

    prompt_ids: tuple[int, ...]
    new_tokens: int
    seed: int


@dataclass
class DrawRows:
    """The draw state of ``rows`` prompts over ``candidates`` (``CuratedVocabulary.candidate_ids``)."""

    unused: torch.Tensor
    """(rows, candidates) bool: curated words not yet in the text; the comma's column always False."""
    after_comma: torch.Tensor
    """(rows,) bool: the text ends with a comma."""
    left: torch.Tensor
    """(rows,) long: tokens the row may still add."""
    uniforms: torch.Tensor
    """(rows, steps) float32: each row's uniform number per step."""
    drawn: torch.Tensor
    """(rows, steps) long: the candidate drawn at each step, -1 where the row drew none."""
    comma: int
    """The comma's candidate index."""
    top_k: int

    @classmethod
    def start(
        cls, vocabulary: CuratedVocabulary, prompts: Sequence[RowPrompt], top_k: int, device: torch.device
    ) -> DrawRows:
        candidates = len(vocabulary.candidate_ids)
        comma = vocabulary.candidate_index[vocabulary.comma_id]
        steps = max(prompt.new_tokens for prompt in prompts)
        unused = torch.ones((len(prompts), candidates), dtype=torch.bool)
        unused[:, comma] = False
        uniforms = torch.zeros((len(prompts), steps), dtype=torch.float32)
        for row, prompt in enumerate(prompts):
            used = [
                vocabulary.candidate_index[t] for t in prompt.prompt_ids if t in vocabulary.candidate_index
            ]
            unused[row, used] = False
            generator = torch.Generator().manual_seed(prompt.seed)  # (the global RNG stays untouched)
            uniforms[row, : prompt.new_tokens] = torch.rand(prompt.new_tokens, generator=generator)
        last = [prompt.prompt_ids[-1] if prompt.prompt_ids else -1 for prompt in prompts]
        return cls(
            unused=unused.to(device),
            after_comma=torch.tensor([token == vocabulary.comma_id for token in last], device=device),
            left=torch.tensor([prompt.new_tokens for prompt in prompts], device=device),
            uniforms=uniforms.to(device),
            drawn=torch.full((len(prompts), steps), -1, dtype=torch.long, device=device),
            comma=comma,
            top_k=top_k,
        )

    @property
    def steps(self) -> int:
        return int(self.drawn.shape[1])

    def drawing(self) -> torch.Tensor:
        """(rows,) bool: rows that draw at the next step (tokens left and a curated word unused:
        once every word is used a row stops rather than add commas only)."""
        return (self.left > 0) & self.unused.any(dim=1)

    def allowed_next(self) -> torch.Tensor:
        """(rows, candidates) bool: which candidates may come next in each row."""
        allowed = self.unused.clone()
        allowed[:, self.comma] = ~self.after_comma
        return allowed

    def draw(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Draw step ``step``'s candidate for every row from ``logits`` (rows, candidates) and
        record it; returns the (rows,) candidate indices (meaningless for rows not drawing)."""
        drawing = self.drawing()
        scores = logits.float().masked_fill(~self.allowed_next(), float("-inf"))
        top_k = min(self.top_k, scores.shape[1])
        kth = torch.topk(scores, top_k, dim=1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
        cumulative = torch.softmax(scores, dim=1).cumsum(dim=1)
        threshold = self.uniforms[:, step : step + 1] * cumulative[:, -1:]
        index = torch.searchsorted(cumulative, threshold, right=True).clamp_max(scores.shape[1] - 1)[:, 0]
        self.drawn[:, step] = torch.where(drawing, index, -1)
        still_unused = self.unused.gather(1, index[:, None]) & ~drawing[:, None]
        self.unused.scatter_(1, index[:, None], still_unused)
        self.unused[:, self.comma] = False
        self.after_comma = torch.where(drawing, index == self.comma, self.after_comma)
        self.left = self.left - drawing.long()
        return index

    def drawn_tokens(self, candidate_ids: Sequence[int]) -> list[tuple[int, ...]]:
        """Each row's drawn tokens (vocabulary ids), in order: one copy to the host."""
        drawn = self.drawn.cpu().tolist()
        return [tuple(candidate_ids[index] for index in row if index >= 0) for row in drawn]
