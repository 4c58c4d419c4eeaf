"""Prompt expansion's static GPT-2 step (``static_step.py``) and host-side vocabulary rule, on the CPU.

A real CUDA graph needs an NVIDIA GPU; ``ReplayByRerun`` stands in for the capture layer with its
contract (replay re-reads the static inputs and rewrites one output tensor), as in the UNet graph
tests. The models are real transformers GPT-2s with random weights.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from fooocusd.engine.expansion.expander import PromptExpander
from fooocusd.engine.expansion.sampling import DrawRows, RowPrompt
from fooocusd.engine.expansion.static_step import StaticGPT2, supports
from fooocusd.engine.expansion.vocabulary import CuratedVocabulary
from tests.engine_helpers import ReplayByRerun

PROMPT_IDS = (5, 17, 3, 99, 42, 7, 250, 11, 64, 128)
STEPS = (31, 8, 200, 77, 5, 140)

CPU = torch.device("cpu")


def _gpt2(**overrides: object) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=300, n_positions=128, n_embd=64, n_layer=3, n_head=4, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return GPT2LMHeadModel(config).eval()


@torch.inference_mode()
def _reference_logits(model: GPT2LMHeadModel) -> list[torch.Tensor]:
    """Logits after the prompt, then after each step token, through the model's own forward."""
    ids = torch.tensor([PROMPT_IDS])
    logits = [model(input_ids=ids).logits[0, -1]]
    for token in STEPS:
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        logits.append(model(input_ids=ids).logits[0, -1])
    return logits


def _static_logits(step: StaticGPT2, length: int = 75) -> list[torch.Tensor]:
    logits = [step.start(PROMPT_IDS, length)]
    logits += [step.step(token) for token in STEPS]
    return logits


@pytest.mark.parametrize("overrides", [{}, {"scale_attn_by_inverse_layer_idx": True}])
def test_static_step_logits_match_the_models_own_forward(overrides: dict[str, object]) -> None:
    model = _gpt2(**overrides)
    for static, reference in zip(_static_logits(StaticGPT2(model)), _reference_logits(model), strict=True):
        assert static.dtype == torch.float32 and static.device.type == "cpu"
        torch.testing.assert_close(static, reference, rtol=1e-4, atol=1e-5)


def test_with_candidates_the_step_returns_only_their_logits_in_their_order() -> None:
    model = _gpt2()
    candidates = (250, 3, 17, 299, 0, 128)
    step = StaticGPT2(model, candidates=candidates)
    for static, reference in zip(_static_logits(step), _reference_logits(model), strict=True):
        assert static.shape == (len(candidates),)
        torch.testing.assert_close(static, reference[list(candidates)], rtol=1e-4, atol=1e-5)


def test_rows_step_together_each_with_the_logits_it_gets_alone() -> None:
    model = _gpt2()
    step = StaticGPT2(model, rows=4)
    prompts = [PROMPT_IDS, PROMPT_IDS[:4], (7, 3)]
    tokens = [[31, 8, 200], [5, None, None], [140, 77, 9]]  # the second row finishes after one

    logits = [step.start_rows(prompts, 75)]
    logits += [step.step_rows([row[index] for row in tokens]) for index in range(3)]

    assert step.rows == 4 and logits[0].shape == (3, 300)
    for row, prompt in enumerate(prompts):
        alone = StaticGPT2(model)
        assert alone.rows == 1  # on a CPU
        expected = [alone.start(prompt, 75)]
        fed = [token for token in tokens[row] if token is not None]
        expected += [alone.step(token) for token in fed]
        for index, reference in enumerate(expected):
            torch.testing.assert_close(logits[index][row], reference, rtol=1e-4, atol=1e-5)


def test_a_second_sequence_in_the_same_cache_ignores_what_the_first_left_there() -> None:
    model = _gpt2()
    step = StaticGPT2(model)
    step.start((9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9), 75)
    for token in range(40):
        step.step(token)
    again = _static_logits(step)
    for static, reference in zip(again, _reference_logits(model), strict=True):
        torch.testing.assert_close(static, reference, rtol=1e-4, atol=1e-5)


def test_the_step_is_captured_once_per_cache_length_and_replayed_with_the_eager_logits() -> None:
    model = _gpt2()
    eager = _static_logits(StaticGPT2(model))
    graphed = StaticGPT2(model, ReplayByRerun())

    first, second, longer = _static_logits(graphed), _static_logits(graphed), _static_logits(graphed, 150)

    assert (graphed.captures, graphed.replays) == (2, 3 * len(STEPS))
    for logits in (first, second, longer):
        for replayed, expected in zip(logits, eager, strict=True):
            torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "backend", [ReplayByRerun(corrupt=True), ReplayByRerun(fail="operation not permitted when capturing")]
)
def test_a_capture_that_fails_or_differs_leaves_that_length_eager(backend: ReplayByRerun) -> None:
    model = _gpt2()
    step = StaticGPT2(model, backend)
    logits = _static_logits(step)
    assert (step.captures, step.replays) == (0, 0)
    for eager, reference in zip(logits, _static_logits(StaticGPT2(model)), strict=True):
        torch.testing.assert_close(eager, reference)


def test_only_plain_gpt2_takes_the_static_path() -> None:
    assert supports(_gpt2()) == ""
    assert "reordered" in supports(_gpt2(reorder_and_upcast_attn=True))
    assert "cross-attention" in supports(_gpt2(add_cross_attention=True))
    assert "not a GPT-2" in supports(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="plain GPT-2"):
        StaticGPT2(_gpt2(reorder_and_upcast_attn=True))


def test_the_draws_allow_what_the_logits_processor_allows_and_stop_when_the_words_run_out() -> None:
    vocabulary = CuratedVocabulary(range(10, 60), comma_id=1, vocab_size=80)
    candidates = list(vocabulary.candidate_ids)
    assert candidates == [1, *range(10, 60)]
    sequence = [3, 12, 1]
    rows = DrawRows.start(vocabulary, [RowPrompt(tuple(sequence), 100, seed=5)], top_k=100, device=CPU)
    generator = torch.Generator().manual_seed(0)
    for step in range(rows.steps):
        expected = vocabulary(torch.tensor([sequence]), torch.zeros(1, 80))
        outside = [token for token in range(80) if token not in candidates]
        assert torch.isinf(expected[0, outside]).all(), "only candidates are ever allowed"
        assert torch.equal(rows.allowed_next()[0], ~torch.isinf(expected[0, candidates]))
        assert bool(rows.drawing()[0]) == vocabulary.words_left(torch.tensor([sequence]))
        if not rows.drawing()[0]:
            break
        token = candidates[int(rows.draw(torch.randn(1, len(candidates), generator=generator), step)[0])]
        assert not torch.isinf(expected[0, token]), "a drawn token was allowed"
        sequence.append(token)
    assert not rows.drawing()[0], "every word got used"
    assert rows.drawn_tokens(candidates) == [tuple(sequence[3:])]


def test_a_row_draws_the_first_candidate_whose_cumulative_probability_passes_its_uniform_number() -> None:
    vocabulary = CuratedVocabulary(range(10, 14), comma_id=1, vocab_size=20)
    rows = DrawRows.start(vocabulary, [RowPrompt((3,), 1, seed=0)], top_k=2, device=CPU)
    uniform = float(rows.uniforms[0, 0])
    assert uniform == float(torch.rand(1, generator=torch.Generator().manual_seed(0))[0])
    logits = torch.tensor([[9.0, 0.0, 5.0, 5.0, 1.0]])  # the comma (first) and two of four words lead
    # top 2 of the allowed: the comma (9) and a tie of words at 5 (both kept, as top-k keeps ties)
    probabilities = torch.softmax(torch.tensor([9.0, 5.0, 5.0]), dim=0)
    expected = [0, 2, 3][int((probabilities.cumsum(0) > uniform).nonzero()[0])]

    assert int(rows.draw(logits, 0)[0]) == expected
    assert not rows.drawing()[0]  # its one token drawn


@pytest.mark.parametrize("seed", [1, 7, 1234, 2**31 + 5])
def test_expansions_are_the_same_text_through_the_static_step_and_the_models_forward(seed: int) -> None:
    expander = PromptExpander.tiny_random()
    assert expander.static_step is not None
    growing = copy.copy(expander)
    growing.static_step = None
    prompt = "a lighthouse on a cliff at dusk, dramatic light"
    assert expander.expand(prompt, seed) == growing.expand(prompt, seed)


def test_a_row_cannot_step_past_the_end_of_its_cache_but_a_finished_one_can_stand_still() -> None:
    step = StaticGPT2(_gpt2(), rows=2)
    step.start_rows([tuple(range(1, 75)), (5, 6)], 75)
    step.step_rows([7, 8])  # the first row's last position, 74
    step.step_rows([None, 9])  # finished: rewrites its last position, nothing reads it
    with pytest.raises(ValueError, match="already as long as its cache"):
        step.step_rows([10, 11])
