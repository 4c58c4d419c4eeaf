"""``.json`` job files: one object, a list, shared defaults, and a sidecar dropped to make its image again."""

from __future__ import annotations

import json
import shutil

import pytest

from fooocusd.errors import InvalidInput
from fooocusd.jobs.json_format import parse_json
from tests.daemon_harness import Sandbox


def test_an_object_is_one_job_and_the_keys_of_other_tools_work() -> None:
    document = {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "image_number": 2,
        "style_selections": ["Film Noir"],
        "aspect_ratios_selection": "1152*896",
    }
    [spec] = parse_json(json.dumps(document), "fox.json")
    assert (spec.prompt, spec.negative, spec.images, spec.styles, spec.aspect) == (
        "a red fox",
        "blurry",
        2,
        ["Film Noir"],
        "1152*896",
    )


def test_a_list_is_several_jobs_and_keys_beside_jobs_are_shared_defaults() -> None:
    specs = parse_json('[{"prompt": "a fox"}, {"prompt": "an owl", "seed": 3}]', "two.json")
    assert [(spec.prompt, spec.seed) for spec in specs] == [("a fox", None), ("an owl", 3)]
    shared = '{"seed": 7, "steps": 20, "jobs": [{"prompt": "a fox"}, {"prompt": "an owl", "seed": 9}]}'
    assert [(spec.prompt, spec.seed, spec.steps) for spec in parse_json(shared, "shared.json")] == [
        ("a fox", 7, 20),
        ("an owl", 9, 20),
    ]


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        (
            '{"prompt": "a fox",\n "seed": 4,,}',
            "is not valid JSON: Expecting property name",
            "line 2, column 12",
        ),
        ('"a fox"', "holds an object or a list of objects, not a string", "the file"),
        ('{"prompt": "a fox", "negatve": "x"}', "unknown key 'negatve' in top level — did you mean", ""),
        ('{"jobs": {"prompt": "a fox"}}', "'jobs' must be a list of tables", "key 'jobs'"),
        ('{"jobs": []}', "has no jobs", "key 'jobs'"),
        ('[{"prompt": "a fox", "seed": "soon"}]', "'seed' = 'soon' is not valid", "job #1, key 'seed'"),
    ],
    ids=["syntax", "not an object", "unknown key", "jobs not a list", "no jobs", "bad value"],
)
def test_a_bad_json_job_file_is_refused_saying_where(text: str, message: str, where: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_json(text, "bad.json")
    assert message in caught.value.message
    assert where in (caught.value.where or "")


def test_a_sidecar_dropped_as_a_job_makes_its_image_again_and_one_beside_a_picture_uses_it(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("owl.txt", "an owl at night\nstyles: Film Noir\nseed: 77\nsteps: 3\n")
    assert sandbox.drain().ok
    [first] = sandbox.images()
    sidecar = first.with_suffix(".json")
    shutil.copy(sidecar, sandbox.inbox / "again.json")
    assert sandbox.drain().ok
    [again] = [image for image in sandbox.images() if image.name.startswith("again")]
    record = json.loads(again.with_suffix(".json").read_text())
    original = json.loads(sidecar.read_text())
    assert (record["prompt"], record["seed"], record["steps"], record["styles"]) == (
        original["prompt"],
        77,
        3,
        ["Film Noir"],
    )
    assert record["notes"][0] == "read from the fooocusd sidecar"
    (sandbox.inbox / "pair.json").write_text('{"prompt": "an owl in the snow", "steps": 2}')
    shutil.copy(first, sandbox.inbox / "pair.png")
    assert sandbox.drain().ok
    [paired] = [image for image in sandbox.images() if image.name.startswith("pair")]
    record = json.loads(paired.with_suffix(".json").read_text())
    assert record["prompt"] == "an owl in the snow" and record["image_action"]["action"] == "vary_subtle"
