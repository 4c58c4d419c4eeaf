"""The whole path with real components: watcher, journal, tiny-random SDXL engine, outbox."""

from __future__ import annotations

import json
import re
from datetime import date, timedelta

from fooocusd.outbox.reader import read_embedded_metadata
from tests.daemon_harness import RunningDaemon, Sandbox, wait_for


def test_dropped_prompt_becomes_png_with_sidecar_and_input_moves_to_done(sandbox: Sandbox) -> None:
    with RunningDaemon(sandbox.settings()):
        sandbox.drop("cat.txt", "a cat on a windowsill\nseed: 5\n")
        wait_for(lambda: len(sandbox.sidecars()) == 1, what="the sidecar")
        wait_for(lambda: (sandbox.done / "cat.txt").exists(), what="the input in done/")
    [image] = sandbox.images()
    assert image.name == "cat_5_0.png"
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "a cat on a windowsill"
    assert sidecar["seed"] == 5
    assert not (sandbox.inbox / "cat.txt").exists()
    assert read_embedded_metadata(image)["parameters"].startswith("a cat on a windowsill")


def test_files_present_before_start_are_processed(sandbox: Sandbox) -> None:
    sandbox.drop("early.txt", "a bird\nimages: 2\nseed: 1\n")
    result = sandbox.once()
    assert result.returncode == 0, result.stderr
    assert [p.name for p in sandbox.images()] == ["early_1_0.png", "early_2_1.png"]
    assert (sandbox.done / "early.txt").exists()


def test_subfolder_routes_to_preset_and_outputs_mirror_it(sandbox: Sandbox) -> None:
    sandbox.drop("portrait/face.txt", "a face\nseed: 3\n")
    assert sandbox.drain().ok
    [image] = sandbox.images()
    assert image.parent == sandbox.outbox / "portrait"
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["preset"] == "portrait"
    assert (sidecar["requested_width"], sidecar["requested_height"]) == (896, 1152)
    assert (sandbox.done / "portrait" / "face.txt").exists()


def test_a_name_template_with_a_slash_files_images_in_dated_folders(sandbox: Sandbox) -> None:
    sandbox.write_config("[outbox]\nname_template = '{date}/{stem}_{seed}_{index}'\n")
    sandbox.drop("portrait/face.txt", "a face\nseed: 3\n")
    sandbox.drop("face.txt", "a face\nseed: 3\n")
    assert sandbox.drain().ok
    sandbox.drop("face.txt", "a face\nseed: 3\n")
    assert sandbox.drain().ok

    days = {p.parent.name for p in sandbox.images()}
    assert days <= {date.today().isoformat(), (date.today() - timedelta(days=1)).isoformat()}
    names = [str(p.relative_to(sandbox.outbox)) for p in sandbox.images()]
    relative = sorted(re.sub(r"\d{4}-\d\d-\d\d", "DAY", name) for name in names)
    assert relative in (
        ["DAY/face_3_0-1.png", "DAY/face_3_0.png", "portrait/DAY/face_3_0.png"],
        ["DAY/face_3_0.png", "DAY/face_3_0.png", "portrait/DAY/face_3_0.png"],  # across midnight
    )
    for image in sandbox.images():
        sidecar = image.with_suffix(".json")
        assert json.loads(sidecar.read_text())["output_file"] == image.name
        assert read_embedded_metadata(image) is not None


def test_running_the_same_file_again_gives_new_names_and_never_overwrites(sandbox: Sandbox) -> None:
    sandbox.drop("again.txt", "a tree\nseed: 9\n")
    assert sandbox.drain().ok
    first = sandbox.images()[0].read_bytes()
    sandbox.drop("again.txt", "a tree\nseed: 9\n")
    assert sandbox.drain().ok
    names = [p.name for p in sandbox.images()]
    assert names == ["again_9_0-1.png", "again_9_0.png"]
    assert (sandbox.outbox / "again_9_0.png").read_bytes() == first


def test_multi_job_file_makes_every_job_under_its_own_name(sandbox: Sandbox) -> None:
    sandbox.drop("multi.txt", "a red door\nseed: 1\n---\na blue door\nseed: 2\n---\na green door\nseed: 3\n")
    assert sandbox.drain().ok
    prompts = {p.name: json.loads(p.read_text())["prompt"] for p in sandbox.sidecars()}
    assert prompts == {
        "multi-1_1_0.json": "a red door",
        "multi-2_2_0.json": "a blue door",
        "multi-3_3_0.json": "a green door",
    }


def _png(color: str = "red") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_with_a_promptless_same_stem_toml_is_one_image_job_and_both_files_end_in_done(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("cat.png", _png())
    sandbox.drop("cat.toml", 'image_action = "vary_subtle"\nsteps = 1\nseed = 4\n')
    summary = sandbox.drain()
    assert summary.ok, [p.read_text() for p in sandbox.files(sandbox.failed, "*.error.txt")]
    [image] = sandbox.images()
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["prompt"] == "" and sidecar["seed"] == 4
    assert sidecar["image_action"]["action"] == "vary_subtle"
    assert sidecar["image_action"]["source_image"] == "cat.png"
    assert sorted(p.name for p in sandbox.files(sandbox.done)) == ["cat.png", "cat.toml"]
    assert sandbox.files(sandbox.failed) == []


def test_duplicate_content_is_skipped_when_configured(sandbox: Sandbox) -> None:
    text = sandbox.config.read_text().replace('polling = "never"', 'polling = "never"\nduplicates = "skip"')
    sandbox.config.write_text(text)
    sandbox.drop("one.txt", "a fox\nseed: 2\n")
    assert sandbox.drain().ok
    sandbox.drop("two.txt", "a fox\nseed: 2\n")
    summary = sandbox.drain()
    assert summary.ok and summary.duplicates_skipped == 1
    assert len(sandbox.images()) == 1
    assert sorted(p.name for p in sandbox.files(sandbox.done)) == ["one.txt", "two.txt"]


def test_after_success_delete_removes_the_input_and_keep_keeps_a_copy(sandbox: Sandbox) -> None:
    config = sandbox.config.read_text()
    sandbox.config.write_text(config + '\n[outbox]\nafter_success = "delete"\n')
    sandbox.drop("gone.txt", "a moth\nseed: 1\n")
    assert sandbox.drain().ok
    assert sandbox.files(sandbox.done) == [] and len(sandbox.images()) == 1

    sandbox.config.write_text(config + '\n[outbox]\nafter_success = "keep"\n')
    sandbox.drop("kept.txt", "a moth\nseed: 2\n")
    assert sandbox.drain().ok
    assert [p.name for p in sandbox.files(sandbox.state / "kept")] == ["kept.txt"]
    assert sandbox.files(sandbox.inbox) == []


def test_wildcards_from_the_configured_folder_fill_each_image_in_order(sandbox: Sandbox) -> None:
    folder = sandbox.root / "wildcards" / "colours"
    folder.mkdir(parents=True)
    (folder / "colour.txt").write_text("red\nblue\n")
    config = sandbox.config.read_text().replace(
        "[intake]", f'wildcards = "{sandbox.root / "wildcards"}"\n\n[intake]', 1
    )
    sandbox.config.write_text(config)
    sandbox.drop("cats.txt", "a __colour__ cat\nimages: 2\nseed: 4\nwildcards in order: yes\n")
    assert sandbox.drain().ok
    prompts = sorted(json.loads(p.read_text())["prompt"] for p in sandbox.sidecars())
    assert prompts == ["a blue cat", "a red cat"]
