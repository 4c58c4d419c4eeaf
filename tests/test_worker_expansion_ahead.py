"""Prompt expansion ahead of the render (``engine.expand_ahead``) and together before a claim: the
remembered expansions, the thread that runs them ahead, and the worker that offers it (or expands
together) the next queued jobs.

The expansion is the real tiny random expander; the worker tests use a scripted engine (a unit
test of the worker layer), with the real journal, outbox and writer.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from fooocusd.engine.expansion import Expansion, PromptExpansion
from fooocusd.engine.expansion import service as expansion_service
from fooocusd.engine.styles import Workloads
from fooocusd.jobs.spec import JobSpec
from fooocusd.service.expansion_ahead import expands_ahead
from tests.daemon_harness import Sandbox, wait_for
from tests.test_worker_overlap import OneAtATime, _drain, _queue, _states, _worker, setup  # noqa: F401

PROMPT = "a red fox in fresh snow"


def fooocus_v2(prompt: str = PROMPT) -> Workloads:
    return Workloads(
        positive=[prompt], negative=[""], styles_applied=[], expansion=True, expansion_prompt=prompt
    )


class ScriptedExpander:
    """Records the order of expansions; ``hold`` keeps the named prompt's expansion running."""

    def __init__(self, hold: str = "") -> None:
        self.calls: list[str] = []
        self.hold = hold
        self.holding = threading.Event()
        self.release = threading.Event()

    def expand_parts(self, prompt: str, seed: int) -> Expansion:
        self.calls.append(prompt)
        if prompt == self.hold:
            self.holding.set()
            assert self.release.wait(timeout=30)
        text = f"{prompt}, word{seed}"
        return Expansion(prompt, f"word{seed}", text, (), (), 0)

    def expand_many(self, items: list[tuple[str, int]]) -> list[Expansion]:
        return [self.expand_parts(prompt, seed) for prompt, seed in items]


def scripted(expander: ScriptedExpander) -> PromptExpansion:
    expansion = PromptExpansion(tiny_random=True)
    expansion._expander = expander  # type: ignore[assignment]
    return expansion


# -- remembered expansions ------------------------------------------------------------------------


def test_the_same_prompt_and_seed_are_expanded_once_and_remembered() -> None:
    expansion = PromptExpansion(tiny_random=True)
    first = expansion.apply(fooocus_v2(), 7)
    again = expansion.apply(fooocus_v2(), 7)
    other_seed = expansion.apply(fooocus_v2(), 8)
    assert again.expanded_prompt == first.expanded_prompt
    assert other_seed.expanded_prompt != first.expanded_prompt
    assert expansion.expanded == 2


def test_remembered_expansions_are_bounded_oldest_forgotten_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(expansion_service, "MEMO_SIZE", 2)
    expander = ScriptedExpander()
    expansion = scripted(expander)
    for prompt in ("one", "two", "one", "three", "one", "two"):
        expansion.apply(fooocus_v2(prompt), 1)
    assert expander.calls == ["one", "two", "three", "two"]


def test_an_expansion_ahead_is_remembered_for_the_job_that_needs_it_later() -> None:
    expansion = PromptExpansion(tiny_random=True)
    with expansion.ahead():
        ahead = expansion.apply(fooocus_v2(), 3)
    later = expansion.apply(fooocus_v2(), 3)
    assert later.expanded_prompt == ahead.expanded_prompt
    assert (expansion.expanded, expansion.expanded_ahead) == (1, 1)


def test_an_expansion_a_job_needs_now_goes_before_the_next_expansion_ahead() -> None:
    expander = ScriptedExpander(hold="ahead 1")
    expansion = scripted(expander)

    def prepare_ahead() -> None:
        with expansion.ahead():
            for prompt in ("ahead 1", "ahead 2"):
                expansion.apply(fooocus_v2(prompt), 1)

    ahead = threading.Thread(target=prepare_ahead)
    ahead.start()
    assert expander.holding.wait(timeout=30)
    needed = threading.Thread(target=lambda: expansion.apply(fooocus_v2("needed now"), 1))
    needed.start()
    wait_for(lambda: expansion._waiting_now == 1, timeout=30, what="the job to wait for its expansion")
    expander.release.set()
    needed.join(timeout=30)
    ahead.join(timeout=30)

    assert expander.calls == ["ahead 1", "needed now", "ahead 2"]
    assert (expansion.expanded, expansion.expanded_ahead) == (3, 2)


def test_collected_pairs_are_expanded_together_once_and_remembered() -> None:
    expander = ScriptedExpander()
    expansion = scripted(expander)
    with expansion.collecting() as pairs:
        collected = [expansion.apply(fooocus_v2(prompt), 4) for prompt in ("one", "two", "one")]
    assert pairs == [("one", 4), ("two", 4), ("one", 4)]
    assert all(workloads.positive == [workloads.expansion_prompt] for workloads in collected)
    assert expander.calls == []

    assert expansion.expand_together(pairs) == 2
    assert expansion.expand_together(pairs) == 0
    assert expansion.apply(fooocus_v2("two"), 4).expanded_prompt == "two, word4"
    assert expander.calls == ["one", "two"] and expansion.expanded == 2


def test_two_threads_expanding_at_once_get_what_one_thread_gets() -> None:
    seeds = list(range(8))
    alone = PromptExpansion(tiny_random=True)
    expected = {seed: alone.apply(fooocus_v2(), seed).expanded_prompt for seed in seeds}
    expander = PromptExpansion(tiny_random=True).load()
    assert expander is not None
    results: dict[int, str] = {}

    def expand(part: list[int]) -> None:
        for seed in part:
            results[seed] = expander.expand(PROMPT, seed)

    threads = [threading.Thread(target=expand, args=(seeds[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == expected


# -- when it is on ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        ("auto", "cuda", False),
        ("auto", "cpu", False),
        ("on", "cuda", True),
        ("on", "cpu", True),
        ("off", "cuda", False),
    ],
)
def test_expand_ahead_runs_only_when_asked_for(setting: str, device: str, expected: bool) -> None:
    expansion = PromptExpansion(tiny_random=True, device=torch.device(device))
    assert expands_ahead(setting, expansion) is expected


def test_expand_ahead_is_off_without_an_expansion_model() -> None:
    assert not expands_ahead("on", None)
    assert not expands_ahead("on", PromptExpansion())


# -- through the worker ---------------------------------------------------------------------------


def _expanding_worker(setup, engine: OneAtATime, expansion: PromptExpansion, mode: str):  # type: ignore[no-untyped-def]  # noqa: F811
    setup[0].engine.expand_ahead = mode
    worker = _worker(setup, engine)
    worker.expansion = expansion
    return worker


def _fooocus_v2_job(journal, name: str, seed: int) -> int:  # type: ignore[no-untyped-def]
    return _queue(journal, name, JobSpec(prompt=f"{name} at dawn", seed=seed, styles=["Fooocus V2"]))


def test_the_next_jobs_are_expanded_while_the_current_image_renders(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, folders, journal = setup
    expansion = PromptExpansion(tiny_random=True)
    jobs = [_fooocus_v2_job(journal, name, seed) for name, seed in (("fox", 1), ("owl", 2), ("elk", 3))]

    def first_render_waits_for_the_next_two_expansions(request) -> None:  # type: ignore[no-untyped-def]
        if request.seed == 1:
            wait_for(lambda: expansion.expanded_ahead == 2, timeout=30, what="the expansions ahead")

    engine = OneAtATime(on_generate=first_render_waits_for_the_next_two_expansions)
    worker = _expanding_worker(setup, engine, expansion, "on")
    _drain(worker)

    assert _states(journal, *jobs) == [("done", 1)] * 3
    assert engine.seeds == [1, 2, 3]
    assert (expansion.expanded, expansion.expanded_ahead) == (3, 2), "each prompt expanded once"
    assert not [t for t in threading.enumerate() if t.name == "fooocusd-expansion-ahead"]

    reference = PromptExpansion(tiny_random=True)
    records = [json.loads(path.read_text()) for path in sorted(folders.outbox.rglob("*.json"))]
    assert len(records) == 3
    for record in records:
        prompt = record["prompt"]
        wanted = reference.apply(fooocus_v2(prompt), record["seed"])
        assert record["expanded_prompt"] == wanted.expanded_prompt != prompt


def _expansion_counting_runs() -> tuple[PromptExpansion, list[int]]:
    """A tiny-random expansion that records how many prompts each ``expand_many`` run holds."""
    expansion = PromptExpansion(tiny_random=True)
    expander = expansion.load()
    assert expander is not None
    together: list[int] = []
    expand_many = expander.expand_many
    expander.expand_many = lambda items: together.append(len(items)) or expand_many(items)  # type: ignore[method-assign]
    return expansion, together


def test_with_expand_ahead_off_the_next_jobs_are_expanded_together_before_their_claim(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, folders, journal = setup
    expansion, together = _expansion_counting_runs()
    jobs = [_fooocus_v2_job(journal, name, seed) for name, seed in (("fox", 1), ("owl", 2), ("elk", 3))]
    worker = _expanding_worker(setup, OneAtATime(), expansion, "off")
    _drain(worker)

    assert _states(journal, *jobs) == [("done", 1)] * 3
    assert (expansion.expanded, expansion.expanded_ahead) == (3, 0)
    assert together == [3]  # the whole queue: fewer than two groups (of two here: batches of one)
    reference = PromptExpansion(tiny_random=True)
    for path in sorted(folders.outbox.rglob("*.json")):
        record = json.loads(path.read_text())
        wanted = reference.apply(fooocus_v2(record["prompt"]), record["seed"])
        assert record["expanded_prompt"] == wanted.expanded_prompt != record["prompt"]


def test_a_broken_job_offered_ahead_fails_only_when_it_is_prepared(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, _, journal = setup
    expansion = PromptExpansion(tiny_random=True)
    good = _fooocus_v2_job(journal, "fox", 1)
    broken = _queue(journal, "bad", JobSpec(prompt="a fox", seed=2, preset="no-such-preset"))
    worker = _expanding_worker(setup, OneAtATime(), expansion, "on")
    _drain(worker)
    assert _states(journal, good, broken) == [("done", 1), ("failed", 1)]
    failed = journal.get_job(broken)
    assert failed is not None and "no-such-preset" in (failed.error or "")


def test_the_daemon_expands_ahead_and_writes_the_same_sidecars(tmp_path: Path) -> None:
    texts: dict[str, dict[str, str]] = {}
    for mode in ("off", "on"):
        sandbox = Sandbox(tmp_path / mode)
        config = sandbox.write_config()
        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace('device = "cpu"', f'device = "cpu"\nexpand_ahead = "{mode}"'))
        for index in range(3):
            text = f"a harbour {index}\nstyles: Fooocus V2\nseed: {index}\nsteps: 2\n"
            sandbox.drop(f"job{index}.txt", text)
        summary = sandbox.drain()
        assert summary.ok and summary.images_written == 3
        records = [json.loads(path.read_text()) for path in sandbox.sidecars()]
        texts[mode] = {record["prompt"]: record["expansion_text"] for record in records}
    assert texts["on"] == texts["off"]
    assert all(texts["on"].values())


def test_expansions_together_run_in_whole_groups_as_the_queue_moves(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    _, _, journal = setup
    expansion, together = _expansion_counting_runs()
    names = ("fox", "owl", "elk", "yak", "emu", "ram", "cod", "eel", "bee", "ant")
    jobs = [_fooocus_v2_job(journal, name, seed) for seed, name in enumerate(names, start=1)]
    worker = _expanding_worker(setup, OneAtATime(), expansion, "off")
    _drain(worker)

    assert _states(journal, *jobs) == [("done", 1)] * len(jobs)
    assert expansion.expanded == len(jobs)
    # groups of two (batches of one): two groups first, then one whole group each time the next
    # group is not expanded yet, and the last two together: never a lone prompt in a model run
    assert together == [4, 2, 2, 2]
