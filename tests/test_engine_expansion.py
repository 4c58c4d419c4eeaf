"""Prompt expansion ("Fooocus V2"): curated words only, no repeats, seeded, to the next 75 tokens.

The expansion models here are real GPT-2 folders, written to ``tmp_path`` with ``save_pretrained``
and loaded back through the same offline path a user's folder takes. Their tokenizer is small
(a byte-level word-level vocabulary) and their model is rigged: whatever the input, it scores
end-of-text, words outside the curated list and the prompt's own words far above everything
else, so only the constrained decoding keeps them out of the text.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from loguru import logger
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from fooocusd.engine.clip_tokens import clip_chunks, clip_token_count
from fooocusd.engine.expansion import PromptExpander, PromptExpansion, build_prompt_expansion
from fooocusd.engine.expansion.expander import (
    cache_argument,
    clean_expansion_text,
    fit_in_clip_chunks,
    joined,
)
from fooocusd.engine.expansion.static_step import StaticGPT2
from fooocusd.engine.expansion.vocabulary import CuratedVocabulary
from fooocusd.engine.expansion.words import WORDS_FILE, allowed_words, load_word_list
from fooocusd.engine.styles import Workloads
from fooocusd.errors import ConfigError
from fooocusd.outbox import read_embedded_metadata
from fooocusd.settings import EngineSettings
from tests.daemon_harness import Sandbox

END = "<|endoftext|>"
UNKNOWN = "<unk>"
PROMPT_WORDS = ("a", "red", "fox", "in", "fresh", "snow", "morning", "light")
FORBIDDEN_WORDS = ("banana", "invoice", "spreadsheet", "tax", "ugly", "blurry")
CURATED = allowed_words(load_word_list())
PROMPT = "a red fox in fresh snow, morning light"
CPU = torch.device("cpu")


def write_expansion_model(folder: Path, curated: tuple[str, ...] = CURATED[:60]) -> Path:
    """A GPT-2 folder whose tokenizer knows the prompt words, ``curated`` and some forbidden words."""
    spelled = [f"Ġ{word}" for word in (*PROMPT_WORDS, *curated, *FORBIDDEN_WORDS)]
    tokens = [END, UNKNOWN, ",", *PROMPT_WORDS, *dict.fromkeys(spelled)]
    tokenizer = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token=UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END, eos_token=END, unk_token=UNKNOWN
    )
    fast.save_pretrained(folder)

    config = GPT2Config(
        vocab_size=len(tokens),
        n_positions=256,
        n_embd=16,
        n_layer=1,
        n_head=2,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        # The last hidden state becomes the constant vector 1, so the scores are the rows' sums.
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        favourites = [END, UNKNOWN, ",", *(f"Ġ{w}" for w in (*FORBIDDEN_WORDS, *PROMPT_WORDS))]
        for token in favourites:
            model.lm_head.weight[tokens.index(token)] = 5.0
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread() -> Iterator[None]:
    # Token-by-token decoding of tiny models is all per-call overhead; extra threads only contend.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_expansion_model(tmp_path_factory.mktemp("expansion") / "rigged-gpt2")


@pytest.fixture(scope="module")
def expander(model_folder: Path) -> PromptExpander:
    return PromptExpander.from_folder(model_folder, device=CPU, dtype=torch.float32)


def added_words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


# -- the word list --------------------------------------------------------------------------------


def test_word_list_holds_600_unique_lowercase_single_words_and_says_whose_it_is() -> None:
    entries = load_word_list()
    assert len(set(entries)) >= 600
    assert len(entries) == len(set(entries))
    assert all(entry.isalpha() and entry == entry.lower() for entry in entries)
    header = WORDS_FILE.read_text(encoding="utf-8").splitlines()[:5]
    assert "fooocusd's own list" in header[0]
    assert any("Apache-2.0" in line for line in header)


# -- constrained decoding ----------------------------------------------------------------------


def test_only_curated_words_and_commas_are_added_never_end_of_text(expander: PromptExpander) -> None:
    end_id = expander.tokenizer.convert_tokens_to_ids(END)
    comma_id = expander.vocabulary.comma_id
    for seed in range(3):
        expansion = expander.expand_parts(PROMPT, seed)
        words = added_words(expansion.added)
        assert words, "the expansion added nothing"
        assert set(words) <= set(CURATED)
        assert not set(words) & set(FORBIDDEN_WORDS)
        assert end_id not in expansion.generated_ids
        allowed_ids = set(expander.word_ids.values()) | {comma_id}
        assert set(expansion.generated_ids) <= allowed_ids


def test_no_token_repeats_not_even_one_of_the_prompt(expander: PromptExpander) -> None:
    comma_id = expander.vocabulary.comma_id
    for seed in range(3):
        expansion = expander.expand_parts("a red fox in fresh snow, morning light, bright", seed)
        new_words = [token for token in expansion.generated_ids if token != comma_id]
        assert len(new_words) == len(set(new_words))
        assert not set(new_words) & set(expansion.prompt_ids)
        pairs = zip(expansion.generated_ids, expansion.generated_ids[1:], strict=False)
        assert all(not (left == right == comma_id) for left, right in pairs), "two commas in a row"


def test_logits_processor_bans_repeats_and_a_second_comma_but_allows_unused_words() -> None:
    processor = CuratedVocabulary(word_token_ids=[3, 4, 5], comma_id=1, vocab_size=8)
    scores = torch.zeros(1, 8)
    after_word = processor(torch.tensor([[6, 3]]), scores.clone())
    assert torch.isfinite(after_word[0]).tolist() == [False, True, False, False, True, True, False, False]
    after_comma = processor(torch.tensor([[6, 3, 1]]), scores.clone())
    assert torch.isfinite(after_comma[0]).tolist() == [False, False, False, False, True, True, False, False]
    assert not processor.words_left(torch.tensor([[3, 4, 5, 1]]))


class PastKeyValuesApi(torch.nn.Module):
    """The model as transformers before 5.2x called it: ``past_key_values`` in and out, not ``cache``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(
        self, input_ids: torch.Tensor, past_key_values: object = None, use_cache: bool = True
    ) -> SimpleNamespace:
        self.calls += 1
        name = cache_argument(self.model)
        output = self.model(input_ids=input_ids, use_cache=use_cache, **{name: past_key_values})
        return SimpleNamespace(logits=output.logits, past_key_values=getattr(output, name))


def test_expansion_runs_on_transformers_that_name_the_cache_past_key_values(expander: PromptExpander) -> None:
    legacy = copy.copy(expander)
    legacy.model = PastKeyValuesApi(expander.model)
    legacy.static_step = None  # the model's own forward: where the cache's name matters
    assert cache_argument(legacy.model) == "past_key_values"
    assert legacy.expand(PROMPT, 1234) == expander.expand(PROMPT, 1234)
    assert legacy.model.calls > 1


# -- seeds ---------------------------------------------------------------------------------------


def test_same_prompt_and_seed_give_the_same_text_and_other_seeds_differ(expander: PromptExpander) -> None:
    first = expander.expand(PROMPT, 1234)
    assert expander.expand(PROMPT, 1234) == first
    others = {expander.expand(PROMPT, seed) for seed in (1, 2)}
    assert len(others | {first}) == 3


def test_seed_is_reduced_to_the_32_bit_range(expander: PromptExpander) -> None:
    assert expander.expand(PROMPT, 7 + 2**32) == expander.expand(PROMPT, 7)
    assert expander.expand(PROMPT, 2**63 - 1) == expander.expand(PROMPT, (2**63 - 1) % 2**32)


# -- length and cleaning -------------------------------------------------------------------------


@pytest.mark.parametrize("repeats", [0, 12])
def test_text_grows_to_exactly_the_next_75_token_boundary(expander: PromptExpander, repeats: int) -> None:
    prompt = PROMPT + " fox" * repeats * 8  # 12 × 8 more words take it past one chunk
    expansion = expander.expand_parts(prompt, 99)
    boundary = 75 * math.ceil(len(expansion.prompt_ids) / 75)
    assert expansion.target_tokens == boundary == (150 if repeats else 75)
    assert len(expansion.prompt_ids) + len(expansion.generated_ids) == boundary
    raw = expansion.prompt + "," + expander.tokenizer.decode(list(expansion.generated_ids))
    assert len(expander.tokenizer(raw)["input_ids"]) == boundary


def test_prompt_already_on_a_boundary_comes_back_unchanged(expander: PromptExpander) -> None:
    prompt = "fox" + " fox" * 73  # 74 tokens, 75 with the comma
    expansion = expander.expand_parts(prompt, 5)
    assert len(expansion.prompt_ids) == 75
    assert expansion.generated_ids == ()
    assert expansion.text == prompt
    assert expansion.added == ""


def test_prompt_is_cleaned_and_ends_with_a_comma_before_generation(expander: PromptExpander) -> None:
    expansion = expander.expand_parts("  a red  fox in fresh snow ,. \n", 3)
    assert expansion.prompt == "a red fox in fresh snow"
    assert expansion.prompt_ids[-1] == expander.vocabulary.comma_id
    assert expansion.text.startswith("a red fox in fresh snow, ")
    assert expansion.text == f"{expansion.prompt}, {expansion.added}"
    assert not expansion.text.endswith((",", " "))


@pytest.mark.parametrize("prompt", ["", "   ", " ,. \n"])
def test_empty_prompt_is_not_expanded(expander: PromptExpander, prompt: str) -> None:
    expansion = expander.expand_parts(prompt, 1)
    assert expansion.text == expansion.added == ""
    assert expansion.generated_ids == ()


def test_generation_stops_when_the_curated_words_run_out(tmp_path: Path) -> None:
    folder = write_expansion_model(tmp_path / "few-words", curated=CURATED[:6])
    few = PromptExpander.from_folder(folder, device=CPU, dtype=torch.float32)
    expansion = few.expand_parts(PROMPT, 11)
    assert set(added_words(expansion.added)) == set(CURATED[:6]) - set(PROMPT_WORDS)
    assert len(expansion.generated_ids) < expansion.target_tokens - len(expansion.prompt_ids)


def test_tiny_random_expander_spells_every_curated_word_as_one_token() -> None:
    tiny = PromptExpander.tiny_random()
    assert set(tiny.word_ids) == set(CURATED)
    expansion = tiny.expand_parts(PROMPT, 42)
    assert len(expansion.prompt_ids) + len(expansion.generated_ids) == 75
    assert set(added_words(expansion.added.replace(" ", ","))) <= set(CURATED)
    assert tiny.expand(PROMPT, 42) == expansion.text


QUEUE_PROMPTS = (
    PROMPT,
    "a lighthouse on a rocky coast at dusk, job 12",
    "an old tram, rain",
    PROMPT + " fox" * 90,
)


def test_expansion_never_takes_another_clip_chunk_than_its_prompt() -> None:
    tiny = PromptExpander.tiny_random()
    spilled = 0
    for prompt, seed in itertools.product(QUEUE_PROMPTS, range(4)):
        expansion = tiny.expand_parts(prompt, seed)
        limit = 75 * clip_chunks(expansion.prompt)
        sampled = clean_expansion_text(tiny.tokenizer.decode(list(expansion.generated_ids)))
        spills = clip_token_count(joined(expansion.prompt, sampled)) > limit
        assert expansion.added and sampled.startswith(expansion.added)
        assert clip_chunks(expansion.text) == clip_chunks(expansion.prompt)
        if spills:  # only the words past the chunk are dropped: it stays full
            assert limit - 8 <= clip_token_count(expansion.text) <= limit
        else:
            assert expansion.added == sampled
        spilled += spills
    assert spilled >= 8  # 75 expansion tokens are more than 75 CLIP tokens, mostly


def test_fitting_an_expansion_drops_words_from_its_end_only() -> None:
    words = CURATED[:80]
    fitted = fit_in_clip_chunks("a red fox", " ".join(words)).split(" ")
    assert fitted == list(words[: len(fitted)])
    assert clip_token_count(joined("a red fox", " ".join(fitted))) <= 75
    assert clip_token_count(joined("a red fox", " ".join(words[: len(fitted) + 1]))) > 75
    assert fit_in_clip_chunks("a red fox", "misty dawn") == "misty dawn"


def with_four_rows(expander: PromptExpander) -> PromptExpander:
    """The expander with a GPU's four-row static step, on the CPU."""
    candidates = expander.vocabulary.candidate_ids
    expander.static_step = StaticGPT2(expander.model, None, candidates, rows=4)
    return expander


def test_prompts_expanded_together_get_the_texts_they_get_alone() -> None:
    tiny = with_four_rows(PromptExpander.tiny_random())
    items = [(prompt, seed) for seed, prompt in enumerate((*QUEUE_PROMPTS, "", "a quiet harbour at night"))]

    together = tiny.expand_many(items)

    assert together == [tiny.expand_parts(prompt, seed) for prompt, seed in items]
    one_row = PromptExpander.tiny_random()
    assert one_row.static_step is not None and one_row.static_step.rows == 1  # on a CPU
    assert together == one_row.expand_many(items)
    assert together[-2].text == "" and together[3].target_tokens > 75  # a blank one and a longer one


def test_expanding_together_advances_every_prompt_with_each_model_step() -> None:
    tiny = with_four_rows(PromptExpander.tiny_random())
    assert tiny.static_step is not None
    calls = []
    step = tiny.static_step.step_rows_on_device
    tiny.static_step.step_rows_on_device = lambda tokens, fed: calls.append(len(tokens)) or step(tokens, fed)  # type: ignore[method-assign]
    items = [(f"{QUEUE_PROMPTS[1]} {index}", index) for index in range(4)]

    expansions = tiny.expand_many(items)

    longest = max(len(expansion.generated_ids) for expansion in expansions)
    assert calls == [4] * (longest - 1)  # one step per token of the longest, not per token of all


# -- engine.expansion ----------------------------------------------------------------------------


def fooocus_v2_workloads(prompt: str = PROMPT) -> Workloads:
    return Workloads(
        positive=[prompt], negative=[""], styles_applied=[], expansion=True, expansion_prompt=prompt
    )


def test_off_leaves_fooocus_v2_jobs_unexpanded_and_says_why(tmp_path: Path) -> None:
    expansion = build_prompt_expansion(EngineSettings(model="tiny-random", expansion="off"), tmp_path)
    assert not expansion.enabled
    result = expansion.apply(fooocus_v2_workloads(), 5)
    assert result.positive == [PROMPT]
    assert result.expansion_status == 'unavailable (engine.expansion = "off")'
    assert result.expanded_prompt == ""


def test_auto_without_a_model_is_off_and_says_where_to_put_one_once(tmp_path: Path) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="INFO", format="{message}")
    try:
        expansion = build_prompt_expansion(EngineSettings(model="sdxl.safetensors"), tmp_path / "models")
        first = expansion.apply(fooocus_v2_workloads(), 1)
        second = expansion.apply(fooocus_v2_workloads(), 2)
    finally:
        logger.remove(sink)
    assert not expansion.enabled
    assert first.expansion_status == second.expansion_status == "unavailable (no model)"
    assert first.positive == [PROMPT]
    about = [message for message in messages if "Fooocus V2" in message]
    assert len(about) == 1
    assert str(tmp_path / "models" / "prompt_expansion") in about[0]
    assert "hf download openai-community/gpt2" in about[0]


def test_auto_uses_a_gpt2_folder_under_prompt_expansion(tmp_path: Path) -> None:
    write_expansion_model(tmp_path / "models" / "prompt_expansion" / "my-gpt2")
    expansion = build_prompt_expansion(EngineSettings(model="sdxl.safetensors"), tmp_path / "models")
    assert expansion.folder == tmp_path / "models" / "prompt_expansion" / "my-gpt2"
    result = expansion.apply(fooocus_v2_workloads(), 8)
    assert result.expansion_status == "fooocus_v2"
    assert result.expansion_model == "my-gpt2"
    assert result.positive == [PROMPT, result.expanded_prompt]
    assert result.expanded_prompt == f"{PROMPT}, {result.expansion_text}"


def test_auto_with_the_tiny_random_engine_uses_the_tiny_random_expander(tmp_path: Path) -> None:
    expansion = build_prompt_expansion(EngineSettings(model="tiny-random"), tmp_path)
    assert expansion.tiny_random
    assert expansion.apply(fooocus_v2_workloads(), 3).expansion_model == "tiny-random"


def test_a_path_setting_finds_the_folder_under_prompt_expansion(tmp_path: Path) -> None:
    folder = write_expansion_model(tmp_path / "models" / "prompt_expansion" / "gpt2")
    settings = EngineSettings(model="sdxl.safetensors", expansion="gpt2")
    assert build_prompt_expansion(settings, tmp_path / "models").folder == folder


def test_missing_expansion_folder_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "gpt2"
    with pytest.raises(ConfigError) as caught:
        build_prompt_expansion(EngineSettings(expansion=str(missing)), tmp_path)
    assert str(missing) in caught.value.message
    assert caught.value.where == "engine.expansion"
    assert "config.json" in caught.value.hint


def test_broken_expansion_folder_is_a_config_error_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}), encoding="utf-8")
    (folder / "tokenizer.json").write_text("not a tokenizer", encoding="utf-8")
    expansion = build_prompt_expansion(EngineSettings(expansion=str(folder)), tmp_path)
    with pytest.raises(ConfigError) as caught:
        expansion.preload()
    assert str(folder) in caught.value.message
    assert "hf download openai-community/gpt2" in caught.value.hint


def test_a_plain_prompt_is_untouched_by_an_enabled_expansion() -> None:
    expansion = PromptExpansion(tiny_random=True)
    plain = Workloads(positive=[PROMPT], negative=[""], styles_applied=[], expansion=False)
    result = expansion.apply(plain, 1)
    assert result.positive == [PROMPT]
    assert result.expansion_status == "off"


# -- through the daemon ----------------------------------------------------------------------------


def test_each_image_of_a_fooocus_v2_job_gets_its_own_expansion_in_the_sidecar(sandbox: Sandbox) -> None:
    sandbox.drop("fox.txt", f"{PROMPT}\nstyles: Fooocus V2\nimages: 2\nseed: 100\nsteps: 2\n")
    sandbox.drop("plain.txt", "a quiet harbour\nsteps: 2\n")
    summary = sandbox.drain()
    assert summary.ok and summary.images_written == 3

    records = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sandbox.sidecars()}
    fox = [record for name, record in records.items() if name.startswith("fox")]
    plain = [record for name, record in records.items() if name.startswith("plain")]
    assert len(fox) == 2 and len(plain) == 1
    for record in fox:
        assert record["expansion"] == "fooocus_v2"
        assert record["expansion_model"] == "tiny-random"
        assert record["expansion_text"]
        assert record["expanded_prompt"] == f"{PROMPT}, {record['expansion_text']}"
        assert record["full_prompt"][-1] == record["expanded_prompt"]
    assert fox[0]["expansion_text"] != fox[1]["expansion_text"]
    assert plain[0]["expansion"] == "off"
    assert plain[0]["expanded_prompt"] == ""

    image = next(path for path in sandbox.images() if path.name.startswith("fox"))
    parameters = read_embedded_metadata(image)["parameters"]
    assert parameters is not None and "Fooocus V2 Expansion: " in parameters
