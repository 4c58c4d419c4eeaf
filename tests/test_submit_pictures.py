"""``fooocusd submit`` brings the pictures a job file needs, or writes nothing and says why."""

from __future__ import annotations

import io
import os
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from fooocusd.cli import main
from tests.daemon_harness import Sandbox


def _png(colour: str, size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _mask() -> bytes:
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (24, 16, 72, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def _submit(sandbox: Sandbox, path: Path) -> int:
    return main(["submit", str(path), "--config", str(sandbox.config)])


def _inbox_files(sandbox: Sandbox) -> list[str]:
    return [path.relative_to(sandbox.inbox).as_posix() for path in sandbox.files(sandbox.inbox)]


def test_submit_brings_the_pictures_a_job_names_and_the_daemon_runs_it(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "shed.png").write_bytes(_png("teal"))
    job = tmp_path / "again.toml"
    job.write_text('prompt = "a garden shed"\nimage = "refs/shed.png"\naction = "vary_strong"\nseed = 9\n')

    assert _submit(sandbox, job) == 0
    assert "(with refs/shed.png)" in capsys.readouterr().out
    assert _inbox_files(sandbox) == ["again.toml", "refs/shed.png"]
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_failed) == (1, 0)
    assert len(sandbox.images()) == 1


def test_submit_brings_the_picture_and_mask_that_pair_with_the_job_file_by_name(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "room.png").write_bytes(_png("olive"))
    (tmp_path / "room.mask.png").write_bytes(_mask())
    (tmp_path / "room.txt").write_text("a vase of flowers\nsteps: 2\n")

    assert _submit(sandbox, tmp_path / "room.txt") == 0
    assert "(with room.png, room.mask.png)" in capsys.readouterr().out
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_failed) == (1, 0)
    (image,) = sandbox.images()
    assert '"action": "inpaint"' in image.with_suffix(".json").read_text()


def test_submit_brings_the_pictures_that_pair_by_name_when_a_mac_spelled_their_names_apart(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typed, from_a_mac = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    (tmp_path / f"{from_a_mac}.png").write_bytes(_png("olive"))
    (tmp_path / f"{from_a_mac}.mask.png").write_bytes(_mask())
    (tmp_path / f"{typed}.txt").write_text("a vase of flowers\nsteps: 2\n")

    assert _submit(sandbox, tmp_path / f"{typed}.txt") == 0
    assert f"(with {from_a_mac}.png, {from_a_mac}.mask.png)" in capsys.readouterr().out
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_failed) == (1, 0)
    (image,) = sandbox.images()
    assert '"action": "inpaint"' in image.with_suffix(".json").read_text()


@pytest.mark.parametrize(
    ("job_name", "job_text", "said"),
    [
        (
            "two.toml",
            '[[job]]\nprompt = "x"\nimage = "a.png"\n\n[[job]]\nprompt = "y"\nimage = "b.png"\n',
            "two.toml names b.png, which is not there",
        ),
        ("broken.toml", 'prompt = "unterminated\n', "broken.toml is not valid TOML"),
        (
            "far.txt",
            "a fox\nimage: ../elsewhere/a.png\n",
            "far.txt names ../elsewhere/a.png, outside its own folder",
        ),
        ("typo.txt", "a fox\nsampler: dpmpp_2m_sde_gpo\n", "unknown sampler 'dpmpp_2m_sde_gpo' — did you"),
        ("style.txt", "a fox\nstyles: Fooocus V2, No Such Style\n", "unknown style: 'No Such Style'"),
        (
            "several.toml",
            '[[job]]\nprompt = "x"\n\n[[job]]\nprompt = "y"\npreset = "nope"\n',
            "there is no preset named 'nope' Where: job 2",
        ),
        ("noir.txt", "a fox\nperformance: speed\nscheduler: lcm\n", "cannot use scheduler 'lcm'"),
    ],
    ids=["missing-picture", "unreadable", "picture-outside", "sampler", "style", "preset", "pair"],
)
def test_submit_of_a_job_that_cannot_go_in_as_it_is_writes_nothing_and_says_why(
    sandbox: Sandbox,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    job_name: str,
    job_text: str,
    said: str,
) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for folder in ("jobs", "elsewhere"):
        (tmp_path / folder / "a.png").write_bytes(_png("red"))
    (tmp_path / "jobs" / job_name).write_text(job_text)
    assert _submit(sandbox, tmp_path / "jobs" / job_name) == 2
    assert said in " ".join(capsys.readouterr().err.split())
    assert _inbox_files(sandbox) == []


def test_submit_reuses_a_picture_already_in_the_inbox_but_never_replaces_a_different_one(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "shed.png").write_bytes(_png("teal"))
    job = tmp_path / "again.toml"
    job.write_text('prompt = "a shed"\nimage = "shed.png"\n')
    sandbox.drop("shed.png", _png("teal"))
    assert _submit(sandbox, job) == 0
    assert "(with" not in capsys.readouterr().out, "the same picture is there already"
    assert _inbox_files(sandbox) == ["again.toml", "shed.png"]

    (sandbox.inbox / "again.toml").unlink()
    sandbox.drop("shed.png", _png("red"))
    assert _submit(sandbox, job) == 2
    assert "already holds a different shed.png" in capsys.readouterr().err
    assert _inbox_files(sandbox) == ["shed.png"]
    assert (sandbox.inbox / "shed.png").read_bytes() == _png("red")


def test_submit_refuses_a_job_whose_name_is_taken_when_pictures_pair_with_it_by_name(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fox.png").write_bytes(_png("orange"))
    (tmp_path / "fox.txt").write_text("a fox\n")
    sandbox.drop("fox.txt", "another fox\n")
    assert _submit(sandbox, tmp_path / "fox.txt") == 2
    assert "already holds fox.txt" in capsys.readouterr().err
    assert _inbox_files(sandbox) == ["fox.txt"]


def test_submit_checks_names_against_the_preset_of_the_subfolder_it_goes_to(
    sandbox: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "noir.toml").write_text('sampler = "warp"\n')
    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace("[intake]", f'presets = "{presets}"\n\n[intake]', 1))
    (tmp_path / "fox.txt").write_text("a fox\n")

    command = ["submit", str(tmp_path / "fox.txt"), "--subdir", "noir", "--config", str(sandbox.config)]
    assert main(command) == 2
    assert "Where: sampler (from the preset 'noir')" in capsys.readouterr().err
    assert _submit(sandbox, tmp_path / "fox.txt") == 0, "at the top of the inbox the default preset applies"


def test_submit_of_an_empty_prompt_is_refused_at_once(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "--prompt", "  ", "--config", str(sandbox.config)]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert _inbox_files(sandbox) == []


def test_submit_of_files_whose_names_are_not_utf8_writes_the_names_the_daemon_would_give_them(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    folder = os.fsencode(tmp_path)
    with open(folder + b"/caf\xe9.txt", "w") as job:  # unpacked from a Windows zip
        job.write("a cafe terrace\nsteps: 2\n")
    with open(folder + b"/caf\xe9.png", "wb") as picture:
        picture.write(_png("olive"))

    assert _submit(sandbox, Path(os.fsdecode(folder + b"/caf\xe9.txt"))) == 0

    assert _inbox_files(sandbox) == ["caf\ufffd.png", "caf\ufffd.txt"], "renamed already: --wait finds it"
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_failed) == (1, 0)
    (image,) = sandbox.images()
    assert '"source_image": "caf\ufffd.png"' in image.with_suffix(".json").read_text(encoding="utf-8")
