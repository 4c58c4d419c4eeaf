"""Prompt weights and long prompts: parsing, 77-token chunks, the A1111 maths, and the encoder with them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from fooocusd.engine.clip_tokens import clip_chunks, clip_token_count
from fooocusd.engine.conditioning import encode_workloads
from fooocusd.engine.models import SDXL_CONFIG_DIR
from fooocusd.engine.tiny import build_tiny_sdxl_pipeline
from fooocusd.engine.weighting import (
    BREAK_ID,
    TokenChunk,
    WeightedSpan,
    apply_token_weights,
    chunk_tokens,
    empty_chunk,
    parse_weights,
)

CPU = torch.device("cpu")
LONG_PROMPT = " ".join(f"word{n}" for n in range(50))  # 140 tokens: two blocks


# -- parsing -----------------------------------------------------------------------------------


def test_a_prompt_without_weights_is_one_span_of_weight_one() -> None:
    assert parse_weights("a lighthouse, at dawn") == [WeightedSpan("a lighthouse, at dawn", 1.0)]
    assert parse_weights("") == []


def test_each_level_of_parentheses_multiplies_the_weight_by_1_1() -> None:
    spans = parse_weights("a (red (old) car) here")
    assert [span.text for span in spans] == ["a ", "red ", "old", " car", " here"]
    assert [span.weight for span in spans] == pytest.approx([1.0, 1.1, 1.21, 1.1, 1.0])


def test_an_explicit_weight_sets_the_weight_whatever_surrounds_it() -> None:
    assert parse_weights("(cat:1.5) ((dog:0.5))") == [
        WeightedSpan("cat", 1.5),
        WeightedSpan(" ", 1.0),
        WeightedSpan("dog", 0.5),
    ]
    assert parse_weights("(a (b:1.3):0.8)") == [WeightedSpan("a ", 0.8), WeightedSpan("b", 1.3)]


def test_escaped_and_unmatched_parentheses_are_plain_text() -> None:
    assert parse_weights(r"a \(b\) c :) (d") == [WeightedSpan("a (b) c :) (d", 1.0)]
    assert parse_weights(r"(x \) y)") == [WeightedSpan("x ) y", pytest.approx(1.1))]


def test_a_colon_that_is_not_a_trailing_number_stays_in_the_text() -> None:
    assert parse_weights("(time: noon)") == [WeightedSpan("time: noon", pytest.approx(1.1))]


def test_weight_one_spans_merge_back_into_the_plain_text() -> None:
    assert parse_weights("a (lighthouse:1.0) at dawn") == [WeightedSpan("a lighthouse at dawn", 1.0)]


def test_break_in_capitals_as_a_word_is_a_span_of_its_own_wherever_it_stands() -> None:
    assert parse_weights("a cat BREAK (a hat:1.2) BREAK,") == [
        WeightedSpan("a cat", 1.0),
        WeightedSpan("", 1.0, chunk_break=True),
        WeightedSpan("a hat", 1.2),
        WeightedSpan("", 1.0, chunk_break=True),
        WeightedSpan(",", 1.0),
    ]
    assert parse_weights("(fur BREAK tail:1.3)")[1].chunk_break  # inside a weight too, as in A1111
    for text in ("a break in the clouds", "BREAKFAST club", "outBREAK"):
        assert parse_weights(text) == [WeightedSpan(text, 1.0)]


# -- chunking ----------------------------------------------------------------------------------


def test_a_break_ends_the_chunk_it_stands_in_and_never_makes_an_empty_one() -> None:
    tokens = [(BREAK_ID, 1.0), (10, 1.0), (11, 1.0), (BREAK_ID, 1.0), (BREAK_ID, 1.0), (12, 1.3)]
    first, second = chunk_tokens([*tokens, (BREAK_ID, 1.0)], bos=1, eos=2, pad=0)
    assert first.ids == (1, 10, 11, 2, *([0] * 73)) and not first.weighted
    assert second.ids == (1, 12, 2, *([0] * 74)) and second.weighted
    full = [(100 + n, 1.0) for n in range(75)]
    assert len(chunk_tokens([*full, (BREAK_ID, 1.0), (7, 1.0)], bos=1, eos=2, pad=0)) == 2


def test_token_and_chunk_counts_follow_breaks() -> None:
    assert clip_chunks("a cat BREAK a hat") == 2 and clip_chunks("a cat BREAK") == 1
    assert clip_token_count("a cat BREAK a hat") == clip_token_count("a cat a hat")


def test_a_short_prompt_is_framed_as_one_77_token_chunk() -> None:
    [chunk] = chunk_tokens([(10, 1.0), (11, 1.5)], bos=1, eos=2, pad=0)
    assert chunk.ids == (1, 10, 11, 2, *([0] * 73))
    assert chunk.weights == (1.0, 1.0, 1.5, *([1.0] * 74))
    assert chunk.weighted


def test_more_than_75_tokens_are_split_into_chunks_of_75_each_framed() -> None:
    chunks = chunk_tokens([(100 + n, 1.0) for n in range(160)], bos=1, eos=2, pad=0)
    assert [len(chunk.ids) for chunk in chunks] == [77, 77, 77]
    assert chunks[0].ids[:2] == (1, 100) and chunks[0].ids[75:] == (174, 2)
    assert chunks[1].ids[1] == 175 and chunks[2].ids[:13] == (1, *range(250, 260), 2, 0)
    assert not any(chunk.weighted for chunk in chunks)


def test_no_tokens_give_the_empty_prompt_chunk() -> None:
    assert chunk_tokens([], bos=1, eos=2, pad=2) == [empty_chunk(bos=1, eos=2, pad=2)]
    assert empty_chunk(bos=1, eos=2, pad=2).ids == (1, *([2] * 76))


# -- maths -------------------------------------------------------------------------------------


def _chunk(weights: list[float]) -> TokenChunk:
    return TokenChunk(ids=tuple(range(len(weights))), weights=tuple(weights))


def test_a_weighted_token_moves_away_from_the_empty_encoding_then_the_mean_is_restored() -> None:
    hidden = torch.tensor([[[2.0, 4.0], [1.0, 1.0], [3.0, 1.0]]])
    empty = torch.tensor([[0.0, 2.0], [1.0, 1.0], [1.0, 1.0]])
    out = apply_token_weights(hidden, empty, [_chunk([2.0, 1.0, 1.0])])
    # token 0: [0, 2] + 2·([2, 4] − [0, 2]) = [4, 6]; mean 16/6 → rescale to the original 12/6
    expected = torch.tensor([[[4.0, 6.0], [1.0, 1.0], [3.0, 1.0]]]) * (2.0 / (16.0 / 6.0))
    assert torch.allclose(out, expected)
    assert out.mean().item() == pytest.approx(hidden.mean().item())


def test_weight_zero_pulls_a_token_to_the_empty_encoding_before_rescaling() -> None:
    hidden = torch.tensor([[[5.0], [1.0]]])
    empty = torch.tensor([[[3.0], [7.0]]])
    out = apply_token_weights(hidden, empty, [_chunk([0.0, 1.0])])
    assert torch.allclose(out, torch.tensor([[[3.0], [1.0]]]) * (3.0 / 2.0))


def test_unweighted_chunks_come_back_bit_for_bit_beside_weighted_ones() -> None:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 4, 3, generator=generator, dtype=torch.float16)
    empty = torch.randn(4, 3, generator=generator, dtype=torch.float16)
    out = apply_token_weights(hidden, empty, [_chunk([1.0, 1.3, 1.0, 1.0]), _chunk([1.0] * 4)])
    assert out.dtype == torch.float16
    assert torch.equal(out[1], hidden[1]) and not torch.equal(out[0], hidden[0])


def test_chunk_count_must_match_the_encodings() -> None:
    with pytest.raises(ValueError):
        apply_token_weights(torch.zeros(2, 3, 1), torch.zeros(3, 1), [_chunk([1.0] * 3)])


# -- with the tiny encoders ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline() -> Iterator[StableDiffusionXLPipeline]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    scheduler = EulerDiscreteScheduler.from_pretrained(
        SDXL_CONFIG_DIR, subfolder="scheduler", local_files_only=True
    )
    yield build_tiny_sdxl_pipeline(scheduler)
    torch.set_num_threads(threads)


def _stock(pipeline: StableDiffusionXLPipeline, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, _, pooled, _ = pipeline.encode_prompt(prompt, device=CPU, do_classifier_free_guidance=False)
    return tokens, pooled


@pytest.mark.parametrize("prompt", ["a lighthouse, at dawn :)", "", "a (lighthouse:1) at dawn"])
def test_unweighted_short_prompts_encode_bit_identically_to_stock(
    pipeline: StableDiffusionXLPipeline, prompt: str
) -> None:
    with torch.inference_mode():
        ours = encode_workloads(pipeline, [prompt], clip_skip=2, device=CPU)
        tokens, pooled = _stock(pipeline, prompt.replace("(lighthouse:1)", "lighthouse"))
    assert torch.equal(ours.tokens, tokens) and torch.equal(ours.pooled, pooled)


def test_a_weighted_prompt_follows_the_maths_per_encoder(pipeline: StableDiffusionXLPipeline) -> None:
    with torch.inference_mode():
        weighted = encode_workloads(pipeline, ["a (lighthouse:1.5) at dawn"], clip_skip=2, device=CPU)
        plain_tokens, plain_pooled = _stock(pipeline, "a lighthouse at dawn")
        empty_tokens, _ = _stock(pipeline, "")

    def count(text: str) -> int:
        return len(pipeline.tokenizer(text, add_special_tokens=False).input_ids)

    positions = slice(1 + count("a"), 1 + count("a lighthouse"))  # after BOS and "a"
    assert weighted.tokens.shape == plain_tokens.shape == (1, 77, 96)
    assert torch.equal(weighted.pooled, plain_pooled)  # weights never touch the pooled vector
    width_l = pipeline.text_encoder.config.hidden_size
    for side in (slice(0, width_l), slice(width_l, None)):
        z, z_empty, ours = plain_tokens[0, :, side], empty_tokens[0, :, side], weighted.tokens[0, :, side]
        moved = z.clone()
        moved[positions] = z_empty[positions] + 1.5 * (z[positions] - z_empty[positions])
        expected = moved * (z.mean() / moved.mean())
        assert torch.allclose(ours, expected, atol=1e-5)
        assert ours.mean().item() == pytest.approx(z.mean().item(), abs=1e-5)


def test_a_long_prompt_takes_two_blocks_and_its_first_block_is_the_stock_truncation(
    pipeline: StableDiffusionXLPipeline,
) -> None:
    assert 75 < len(pipeline.tokenizer(LONG_PROMPT, add_special_tokens=False, verbose=False).input_ids) <= 150
    with torch.inference_mode():
        ours = encode_workloads(pipeline, [LONG_PROMPT, "golden hour"], clip_skip=2, device=CPU)
        truncated_tokens, truncated_pooled = _stock(pipeline, LONG_PROMPT)
        second_line = encode_workloads(pipeline, ["golden hour"], clip_skip=2, device=CPU)
    assert ours.tokens.shape[1] == 3 * 77
    assert torch.equal(ours.tokens[:, :77], truncated_tokens)
    assert torch.equal(ours.pooled, truncated_pooled)
    assert torch.equal(ours.tokens[:, 154:], second_line.tokens)
    assert not torch.equal(ours.tokens[:, 77:154], truncated_tokens)


def test_text_after_a_break_starts_a_new_block_that_encodes_as_it_would_alone(
    pipeline: StableDiffusionXLPipeline,
) -> None:
    with torch.inference_mode():
        ours = encode_workloads(pipeline, ["a lighthouse BREAK golden hour"], clip_skip=2, device=CPU)
        first = encode_workloads(pipeline, ["a lighthouse"], clip_skip=2, device=CPU)
        second = encode_workloads(pipeline, ["golden hour"], clip_skip=2, device=CPU)
    assert ours.tokens.shape[1] == 2 * 77
    assert torch.equal(ours.tokens[:, :77], first.tokens) and torch.equal(ours.tokens[:, 77:], second.tokens)
    assert torch.equal(ours.pooled, first.pooled)
