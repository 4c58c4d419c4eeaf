"""A sampler or scheduler that cannot run is refused when the file is dropped, not when its turn comes."""

from __future__ import annotations

import pytest

from fooocusd.cli import main
from tests.daemon_harness import Sandbox


def _error_text(sandbox: Sandbox, relpath: str) -> str:
    return " ".join((sandbox.failed / f"{relpath}.error.txt").read_text().split())


def _job_count(sandbox: Sandbox) -> int:
    return sandbox.journal_rows("SELECT COUNT(*) FROM jobs")[0][0]


def test_a_job_naming_an_unknown_sampler_is_refused_when_dropped_with_the_closest_name(
    sandbox: Sandbox,
) -> None:
    sandbox.drop("dog.txt", "a dog\nsampler: dpmpp_2m_sde_gpo\n")
    sandbox.drop("cat.txt", "a cat\nseed: 1\n")
    summary = sandbox.drain()
    assert (summary.jobs_done, summary.inputs_failed) == (1, 1)
    assert _job_count(sandbox) == 1, "the dog was never queued"
    error = _error_text(sandbox, "dog.txt")
    assert "unknown sampler 'dpmpp_2m_sde_gpo' — did you mean 'dpmpp_2m_sde_gpu'" in error
    assert "Where: sampler" in error


def test_a_scheduler_the_sampler_cannot_use_is_refused_when_dropped(sandbox: Sandbox) -> None:
    sandbox.drop(
        "many.toml",
        '[[job]]\nprompt = "a dog"\n\n[[job]]\nprompt = "a cat"\nsampler = "euler"\nscheduler = "lcm"\n',
    )
    assert sandbox.drain().inputs_failed == 1
    assert _job_count(sandbox) == 0, "one bad job refuses the whole file, as with any other bad value"
    error = _error_text(sandbox, "many.toml")
    assert "sampler 'euler' cannot use scheduler 'lcm'" in error
    assert "Where: job 2, scheduler" in error


def test_an_unknown_sampler_in_a_preset_is_blamed_on_the_preset(sandbox: Sandbox) -> None:
    presets = sandbox.root / "presets"
    presets.mkdir()
    (presets / "noir.toml").write_text('sampler = "warp_drive"\n')
    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace("[intake]", f'presets = "{presets}"\n\n[intake]', 1))
    sandbox.drop("noir/street.txt", "a rainy street\n")
    assert sandbox.drain().inputs_failed == 1
    assert "Where: sampler (from the preset 'noir')" in _error_text(sandbox, "noir/street.txt")


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ('sampler = "warp_drive"', "unknown sampler 'warp_drive'"),
        ('scheduler = "lcm"', "cannot use scheduler 'lcm'"),
    ],
)
def test_the_daemon_will_not_start_with_a_default_sampler_no_job_could_run_with(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], setting: str, reason: str
) -> None:
    sandbox.write_config(setting)
    sandbox.drop("dog.txt", "a dog\n")
    assert main(["once", "--config", str(sandbox.config)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert reason in err and "generation." in err
    assert (sandbox.inbox / "dog.txt").exists(), "nothing was taken from the inbox"
