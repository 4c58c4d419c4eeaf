"""Prompt text syntax before styles: inline LoRA tags, wildcards and arrays; and the worker's use of them."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import pytest
from loguru import logger

from fooocusd.cli import main
from fooocusd.engine.prompt_syntax import (
    BUNDLED_WILDCARDS,
    MAX_WILDCARD_DEPTH,
    InlineLora,
    WildcardLibrary,
    apply_arrays,
    apply_wildcards,
    expand_prompts,
    parse_inline_loras,
    tidy_prompt,
)
from fooocusd.engine.styles import load_styles
from fooocusd.errors import InvalidInput
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.journal.journal import Journal
from fooocusd.service.folders import Folders
from fooocusd.service.worker import Worker
from tests.daemon_harness import Sandbox
from tests.engine_helpers import default_request
from tests.test_worker import ScriptedEngine


def _wildcards(folder: Path, files: dict[str, str]) -> WildcardLibrary:
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return WildcardLibrary(folder, bundled=None)


# -- inline LoRA -------------------------------------------------------------------------------


def test_lora_tags_are_parsed_with_signed_weights_and_stripped() -> None:
    text, loras = parse_inline_loras("a cat, <lora:sub/ink_style:0.8>, on a sofa <lora:detail:-1.5>")
    assert loras == [
        InlineLora("sub/ink_style", 0.8, "<lora:sub/ink_style:0.8>"),
        InlineLora("detail", -1.5, "<lora:detail:-1.5>"),
    ]
    assert text == "a cat, on a sofa"


def test_a_lora_tag_without_weight_counts_as_weight_one() -> None:
    _, loras = parse_inline_loras("<lora:ink> a cat")
    assert loras == [InlineLora("ink", 1.0, "<lora:ink>")]


def test_a_prompt_without_lora_tags_is_returned_untouched() -> None:
    assert parse_inline_loras("a cat,,  on  a sofa") == ("a cat,,  on  a sofa", [])


def test_tidying_collapses_commas_and_spaces_and_trims_the_ends() -> None:
    assert tidy_prompt(" ,a cat ,  , on   a sofa,, ") == "a cat, on a sofa"


# -- wildcards ---------------------------------------------------------------------------------


def test_each_wildcard_occurrence_draws_its_own_line_from_the_rng(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"color.txt": "red\n\n  \ngreen\nblue\n"})
    text = apply_wildcards("__color__ and __color__", library, random.Random(7))
    expected_rng = random.Random(7)
    lines = ("red", "green", "blue")
    assert text == f"{expected_rng.choice(lines)} and {expected_rng.choice(lines)}"


def test_wildcards_read_in_order_take_the_line_at_the_image_index(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"color.txt": "red\ngreen\nblue"})
    picks = [
        apply_wildcards("__color__", library, random.Random(0), image_index=i, in_order=True)
        for i in range(5)
    ]
    assert picks == ["red", "green", "blue", "red", "green"]


def test_wildcard_files_are_found_in_subfolders_by_stem(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"nature/deep/flower-kind.txt": "tulip"})
    assert apply_wildcards("a __flower-kind__", library, random.Random(0)) == "a tulip"
    assert library.names == ["flower-kind"]


def test_nested_wildcards_expand_level_by_level(tmp_path: Path) -> None:
    library = _wildcards(
        tmp_path, {"color_flower.txt": "__color__ __flower__", "color.txt": "red", "flower.txt": "rose"}
    )
    assert apply_wildcards("a __color_flower__", library, random.Random(0)) == "a red rose"


def test_a_missing_or_empty_wildcard_leaves_the_bare_word_and_the_log_says_why(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"blank.txt": "\n \n", "colour.txt": "red"})
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING", format="{message}")
    try:
        text = apply_wildcards("__nowhere__ __blank__ __nowhere__ __color__", library, random.Random(0))
        apply_wildcards("__nowhere__", library, random.Random(1))  # the job's next image: said once
        apply_wildcards("__nowhere__", WildcardLibrary(tmp_path, warn=False, bundled=None), random.Random(0))
    finally:
        logger.remove(sink)
    assert text == "nowhere blank nowhere color"
    folder = library.folder
    assert [message.strip() for message in messages] == [
        f"wildcard __nowhere__ becomes the bare word 'nowhere': there is no nowhere.txt in {folder} or among "
        "the bundled wildcards",
        f"wildcard __blank__ becomes the bare word 'blank': {folder / 'blank.txt'} has no lines",
        f"wildcard __color__ becomes the bare word 'color': there is no color.txt in {folder} or among the "
        "bundled wildcards — did you mean 'colour'?",
    ]


def test_a_wildcard_cycle_is_refused_at_the_depth_limit_naming_the_wildcard(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"loop.txt": "x __loop__"})
    with pytest.raises(InvalidInput) as caught:
        apply_wildcards("__loop__", library, random.Random(0))
    assert f"more than {MAX_WILDCARD_DEPTH} levels deep" in caught.value.message
    assert "__loop__" in caught.value.message and "__loop__" in (caught.value.hint or "")


def test_a_self_doubling_wildcard_is_refused_instead_of_exhausting_memory(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"twice.txt": "__twice__ and __twice__"})
    with pytest.raises(InvalidInput) as caught:
        apply_wildcards("__twice__", library, random.Random(0))
    assert "characters" in caught.value.message


def test_no_wildcard_folder_leaves_the_bundled_wildcards_and_bare_words_for_the_rest() -> None:
    library = WildcardLibrary(None)
    assert apply_wildcards("a __cat__", library, random.Random(0)) == "a cat"
    colour = apply_wildcards("__color__", library, random.Random(0))
    assert colour in (BUNDLED_WILDCARDS / "color.txt").read_text(encoding="utf-8").splitlines()
    assert {"animal", "color", "flower", "lighting", "art_medium"} <= set(library.names)


def test_a_users_wildcard_file_replaces_the_bundled_one_of_the_same_name(tmp_path: Path) -> None:
    path = tmp_path / "mine" / "color.txt"
    path.parent.mkdir()
    path.write_text("ultramarine\n", encoding="utf-8")
    library = WildcardLibrary(tmp_path)
    assert [apply_wildcards("__color__", library, random.Random(seed)) for seed in range(5)] == [
        "ultramarine"
    ] * 5
    assert "animal" in library.names  # the other bundled lists stay


def test_every_bundled_wildcard_list_has_distinct_non_empty_lines() -> None:
    files = sorted(BUNDLED_WILDCARDS.glob("*.txt"))
    assert len(files) >= 10
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines and all(line.strip() == line and line for line in lines), path.name
        assert len(set(lines)) == len(lines), path.name


# -- arrays ------------------------------------------------------------------------------------


def test_an_array_picks_the_element_at_the_image_index_modulo_its_length() -> None:
    picks = [apply_arrays("a [[red, green, blue]] car", i) for i in range(4)]
    assert picks == ["a red car", "a green car", "a blue car", "a red car"]


def test_several_arrays_count_like_a_mixed_radix_number_first_array_fastest() -> None:
    picks = [apply_arrays("[[a,b]] [[x,y,z]]", i) for i in range(7)]
    assert picks == ["a x", "b x", "a y", "b y", "a z", "b z", "a x"]


def test_text_without_arrays_is_unchanged() -> None:
    assert apply_arrays("a [single] (bracket)", 3) == "a [single] (bracket)"


# -- per image ---------------------------------------------------------------------------------


def test_wildcards_reach_every_line_but_arrays_only_the_main_positive_line(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"w.txt": "W"})
    expanded = expand_prompts(
        "\n__w__ [[a, b]]\nextra __w__ [[a, b]]",
        ["more __w__ [[a, b]]"],
        "neg __w__ [[a, b]]\nneg2 __w__",
        wildcards=library,
        rng=random.Random(0),
        image_index=1,
    )
    assert expanded.prompt == "\nW b\nextra W [[a, b]]"
    assert expanded.extra_prompts == ("more W [[a, b]]",)
    assert expanded.negative == "neg W [[a, b]]\nneg2 W"


def test_the_main_lines_draw_from_the_rng_before_the_extra_lines(tmp_path: Path) -> None:
    library = _wildcards(tmp_path, {"n.txt": "\n".join(str(n) for n in range(1000))})
    expanded = expand_prompts(
        "__n__\n__n__", ["__n__"], "__n__", wildcards=library, rng=random.Random(3), image_index=0
    )
    rng = random.Random(3)
    lines = library.lines("n")
    main, negative, extra_line, extra_prompt = (rng.choice(lines) for _ in range(4))
    assert (expanded.prompt, expanded.negative) == (f"{main}\n{extra_line}", negative)
    assert expanded.extra_prompts == (extra_prompt,)


# -- worker ------------------------------------------------------------------------------------


@pytest.fixture
def setup(sandbox):  # type: ignore[no-untyped-def]
    settings = sandbox.settings()
    folders = Folders.from_paths(settings.paths.resolved())
    folders.state.mkdir(parents=True)
    journal = Journal.open(folders.journal_db, owner="test")
    yield settings, folders, journal
    journal.close()


def _worker(setup, engine: ScriptedEngine) -> Worker:  # type: ignore[no-untyped-def]
    settings, folders, journal = setup
    return Worker(
        settings,
        folders,
        journal,
        engine,
        preset_search_dirs(None),
        styles=load_styles(),
        stop_now=threading.Event(),
    )


def test_the_worker_moves_lora_tags_out_of_the_prompt_into_the_request_before_styles(setup) -> None:  # type: ignore[no-untyped-def]
    worker = _worker(setup, ScriptedEngine())
    styled, _ = worker._with_styles(
        default_request(prompt="<lora:a:1> x <lora:b:-0.5>", styles=()), 0, WildcardLibrary(None)
    )
    assert styled.prompt == "x"
    assert styled.loras[-2:] == (("a", 1.0), ("b", -0.5))
    assert all("<lora:" not in workload for workload in styled.positive_workloads)


def test_each_image_gets_its_own_array_pick_and_wildcard_draw_before_styles(  # type: ignore[no-untyped-def]
    setup, tmp_path: Path
) -> None:
    _wildcards(tmp_path / "wildcards", {"animal.txt": "\n".join(f"animal{n}" for n in range(50))})
    worker = _worker(setup, ScriptedEngine())
    wildcards = WildcardLibrary(tmp_path / "wildcards")
    request = default_request(prompt="a __animal__ in [[red, blue]]", negative="", styles=("Film Noir",))
    styled = [worker._with_styles(request, i, wildcards)[0] for i in range(2)]
    draw = random.Random(request.seed).choice([f"animal{n}" for n in range(50)])
    assert [s.prompt for s in styled] == [f"a {draw} in red", f"a {draw} in blue"]
    assert all(s.prompt in s.positive_workloads[0] for s in styled)
    assert styled[0].positive_workloads[0].startswith("film noir")


def test_without_a_wildcards_folder_the_worker_leaves_bare_words(setup) -> None:  # type: ignore[no-untyped-def]
    worker = _worker(setup, ScriptedEngine())
    styled, _ = worker._with_styles(default_request(prompt="a __cat__", styles=()), 0, WildcardLibrary(None))
    assert styled.positive_workloads == ("a cat",)


def test_the_wildcards_command_lists_the_users_files_before_the_bundled_ones(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # long temp paths would otherwise fold inside the table
    sandbox.write_config()
    mine = sandbox.root / "wildcards" / "color.txt"  # the default folder: beside the inbox
    mine.parent.mkdir()
    mine.write_text("ultramarine\n", encoding="utf-8")
    assert main(["wildcards", "--config", str(sandbox.config)]) == 0
    rows = {
        line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if "│ __" in line
    }
    assert str(mine) in rows["__color__"] and "ultramarine" in rows["__color__"]
    assert str(BUNDLED_WILDCARDS / "animal.txt") in rows["__animal__"]
    assert main(["wildcards", "--json", "--config", str(sandbox.config)]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in listing["wildcards"]}
    assert listing["folder"] == str(mine.parent)
    assert by_name["color"] == {"name": "color", "lines": ["ultramarine"], "file": str(mine)}
    assert by_name["season"]["lines"][0] == "early spring"


def test_wildcard_files_saved_by_windows_editors_read_cleanly_and_other_encodings_are_said(
    tmp_path: Path,
) -> None:
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfteal\r\nplum\r\n")
    (tmp_path / "wide.txt").write_text("saffron\n", encoding="utf-16")
    (tmp_path / "latin.txt").write_bytes("café\n".encode("latin-1"))
    library = WildcardLibrary(tmp_path, bundled=None)
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="WARNING", format="{message}")
    try:
        assert library.lines("bom") == ("teal", "plum")  # no BOM in the first word
        assert library.lines("wide") == ("saffron",)
        assert library.lines("latin") == ()
    finally:
        logger.remove(sink)
    [said] = messages
    assert (
        "latin.txt is not valid UTF-8 text (byte 0xe9 on line 1); treated as empty (save the file as UTF-8"
        in said
    )


def test_a_wildcard_left_as_a_bare_word_is_noted_in_the_sidecar_with_the_reason(sandbox: Sandbox) -> None:
    sandbox.drop("fox.txt", "a __colour__ fox\nimages: 2\n")
    assert sandbox.drain().ok
    for sidecar in sandbox.sidecars():
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        assert record["prompt"] == "a colour fox"
        [note] = record["notes"]
        assert note.startswith("wildcard __colour__ became the bare word 'colour': there is no colour.txt")
        assert note.endswith("did you mean 'color'?")
