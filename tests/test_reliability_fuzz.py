"""Fuzzed job files: ``load_drop`` returns specs or raises ``InvalidInput``, nothing else; the
intake stage never raises and ends every file either queued or in failed/ with its error file."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fooocusd.engine.styles import load_styles
from fooocusd.errors import InvalidInput
from fooocusd.intake.ignore import Kind
from fooocusd.intake.pairing import Drop
from fooocusd.intake.watcher import Ready
from fooocusd.jobs.loader import load_drop
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.jobs.spec import JobSpec
from fooocusd.journal.journal import Journal
from fooocusd.service.folders import prepare_folders
from fooocusd.service.intake_stage import IntakeStage
from tests.daemon_harness import Sandbox

MAX_BYTES = 64 * 1024
KNOWN_KEYS = [
    "prompt", "negative", "seed", "images", "aspect", "performance", "steps", "cfg", "sharpness",
    "styles", "sampler", "scheduler", "model", "format", "priority", "name", "image", "action",
    "preset", "clip_skip", "adaptive_cfg", "disable_seed_increment", "wildcards_in_order", "job",
    "jobs", "notes", "image_number", "style_selections",
]  # fmt: skip
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# -- strategies ------------------------------------------------------------------------------

scalars = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=40),
    st.sampled_from(["random", "-1", "16:9", "1152*896", "Quality", "../../x", "/etc/passwd", "png"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KNOWN_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # beyond 64 bits on purpose: TOML refuses them
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


@st.composite
def structured_toml(draw: st.DrawFn) -> str:
    table = draw(
        st.dictionaries(
            st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12)), values, max_size=8
        )
    )
    body = "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items())
    if draw(st.booleans()):
        body += "\n" + "\n".join("[[job]]\n" + f"prompt = {toml_value(draw(values))}" for _ in range(2))
    return body


structured_json = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12)), values, max_size=8),
    st.lists(st.dictionaries(st.sampled_from(KNOWN_KEYS), values, max_size=5), max_size=3),
    values,
).map(lambda document: json.dumps(document, allow_nan=True))

deep_nesting = st.integers(min_value=50, max_value=2500).flatmap(
    lambda depth: st.sampled_from(
        [
            "prompt = " + "[" * depth + "]" * depth,
            "prompt = " + "{a = " * depth + "1" + "}" * depth,
            "\n".join(f"[{'.'.join(['t'] * n)}]" for n in range(1, min(depth, 300))),
            '{"prompt": ' + "[" * depth + "]" * depth + "}",
        ]
    )
)
txt_like = st.lists(
    st.one_of(
        st.text(max_size=60),
        st.builds(lambda k, v: f"{k}: {v}", st.sampled_from(KNOWN_KEYS), st.text(max_size=30)),
        st.just("---"),
    ),
    max_size=12,
).map("\n".join)
A1111_KEYS = ["Sampler", "CFG scale", "Seed", "Size", "Model", "Clip skip", "Schedule type", "Lora weights"]
A1111_KEYS += ["Refiner", "Refiner switch", "VAE", "Sharpness", "ADM Guidance", "Adaptive CFG", "Styles"]
A1111_KEYS += ["Performance", "Raw prompt", "Raw negative prompt", "Hires upscale"]
pasted_a1111 = st.builds(
    lambda prompt, steps, pairs: (
        f"{prompt}\nNegative prompt: blurry\nSteps: {steps}, "
        + ", ".join(f"{key}: {value}" for key, value in pairs)
    ),
    st.text(max_size=40),
    st.text(max_size=6),
    st.lists(st.tuples(st.sampled_from(A1111_KEYS), st.text(max_size=14)), min_size=2, max_size=8),
)
FOOOCUS_KEYS = ["prompt", "negative_prompt", "steps", "seed", "resolution", "base_model", "styles"]
FOOOCUS_KEYS += ["adm_guidance", "guidance_scale", "sharpness", "performance", "sampler", "scheduler"]
FOOOCUS_KEYS += ["loras", "lora_combined_1", "refiner_model", "refiner_switch", "vae", "schema", "input_file"]
pasted_fooocus = st.dictionaries(st.sampled_from(FOOOCUS_KEYS), values, min_size=2).map(
    lambda scheme: json.dumps({"prompt": "a fox", "steps": 30, **scheme})
)
job_bytes = st.one_of(
    st.binary(max_size=512),
    pasted_a1111.map(str.encode),
    pasted_fooocus.map(str.encode),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    txt_like.map(str.encode),
    structured_toml().map(str.encode),
    structured_json.map(str.encode),
    deep_nesting.map(str.encode),
)


# -- load_drop ---------------------------------------------------------------------------------


def _load(inbox: Path, name: str, data: bytes) -> list[JobSpec]:
    path = inbox / name
    path.write_bytes(data)
    return load_drop(
        path,
        None,
        None,
        inbox,
        max_job_file_bytes=MAX_BYTES,
        max_image_pixels=4_000_000,
        default_image_action="vary_subtle",
    )


@pytest.mark.parametrize("suffix", [".txt", ".toml", ".json"])
@FUZZ
@given(data=job_bytes)
def test_any_job_file_gives_specs_or_invalid_input_and_nothing_else(
    tmp_path: Path, suffix: str, data: bytes
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    try:
        specs = _load(inbox, f"fuzz{suffix}", data)
    except InvalidInput as exc:
        assert exc.message.strip(), "an error without a message"
        return
    assert specs and all(isinstance(spec, JobSpec) for spec in specs)


# -- the intake stage ---------------------------------------------------------------------------


@pytest.fixture
def stage(sandbox: Sandbox) -> Iterator[IntakeStage]:
    settings_ = sandbox.settings()
    folders = prepare_folders(settings_)
    journal = Journal.open(folders.journal_db, owner="fuzz")
    styles = load_styles([folders.styles] if folders.styles else [])
    try:
        yield IntakeStage(settings_, folders, journal, preset_search_dirs(folders.presets), styles)
    finally:
        journal.close()


def _ready(path: Path, inbox: Path) -> Ready:
    info = path.stat()
    return Ready(
        path, path.relative_to(inbox).as_posix(), Kind.JOB, info.st_size, info.st_mtime_ns, info.st_ino
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=job_bytes, suffix=st.sampled_from([".txt", ".toml", ".json"]))
def test_intake_stage_queues_or_fails_each_fuzzed_file_with_an_error_file(
    stage: IntakeStage, data: bytes, suffix: str
) -> None:
    inbox = stage.folders.inbox
    name = f"f{uuid.uuid4().hex[:12]}{suffix}"
    path = inbox / name
    path.write_bytes(data)
    before = (stage.counts.queued_inputs, stage.counts.failed_inputs)

    stage.take(Drop(spec=_ready(path, inbox)))

    assert not path.exists(), "the file stayed in the inbox"
    queued = stage.counts.queued_inputs - before[0]
    failed = stage.counts.failed_inputs - before[1]
    assert queued + failed == 1
    if failed:
        error = stage.folders.failed / f"{name}.error.txt"
        assert (stage.folders.failed / name).read_bytes() == data
        assert "What is wrong:" in error.read_text(encoding="utf-8")
    else:
        claimed = list(stage.folders.processing.rglob(name))
        assert len(claimed) == 1 and claimed[0].read_bytes() == data


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000])
def test_toml_nested_thousands_deep_is_invalid_input_not_a_crash(tmp_path: Path, nested: str) -> None:
    """Found by the fuzzer: tomllib's RecursionError escaped, and the daemon retried the file forever."""
    with pytest.raises(InvalidInput, match="nested too deeply"):
        _load(tmp_path, "deep.toml", f"prompt = {nested}\n".encode())


def test_json_nested_thousands_deep_is_invalid_input_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="nested too deeply"):
        _load(tmp_path, "deep.json", ('{"prompt": ' + "[" * 20_000 + "]" * 20_000 + "}").encode())
