"""`fooocusd retry --all-failed` and `fooocusd retry A B`: several failed jobs queued again at once,
e.g. after downloading the file they all lacked."""

from __future__ import annotations

import json

import pytest

from fooocusd.cli import main
from tests.daemon_harness import Sandbox


def _retry(sandbox: Sandbox, *args: str) -> int:
    return main(["retry", *args, "--config", str(sandbox.config)])


def _set_performance(sandbox: Sandbox, performance: str) -> None:
    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace('performance = "speed"', f'performance = "{performance}"'))


def _fail_a_dog_and_a_cat(sandbox: Sandbox) -> None:
    sandbox.drop("dog.txt", "a dog\nmodel: not-downloaded-yet\n")  # fails only when the job runs
    sandbox.drop("cat.txt", "a cat\nmodel: not-downloaded-yet\n")
    assert sandbox.drain().jobs_failed == 2


def test_all_failed_reruns_every_failed_job_once_the_cause_is_fixed_and_leaves_refused_files(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    _set_performance(sandbox, "lightning")  # its LoRA is not in the models folder: every job fails
    sandbox.drop("a.txt", "a dog\nseed: 1\n")
    sandbox.drop("b.txt", "a cat\nseed: 2\n---\na cow\nseed: 3\n")
    sandbox.drop("c.toml", 'prompt = "x"\nimagse = 2\n')  # refused at intake
    assert sandbox.drain().jobs_failed == 3
    sandbox.write_config()  # back to "speed": nothing missing any more
    assert main(["status", "--config", str(sandbox.config)]) == 0
    assert "fooocusd retry --all-failed" in " ".join(capsys.readouterr().out.split())

    assert _retry(sandbox, "--all-failed") == 0

    out = " ".join(capsys.readouterr().out.split())
    assert "a.txt: job 1 queued again" in out and "b.txt: jobs 2, 3 queued again" in out
    assert sorted(path.name for path in sandbox.failed.iterdir()) == ["c.toml", "c.toml.error.txt"]
    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 3
    assert sandbox.journal_rows("SELECT state FROM jobs ORDER BY id") == [("done",)] * 3
    assert sorted(path.name for path in sandbox.done.iterdir()) == ["a.txt", "b.txt"]


def test_all_failed_leaves_a_file_dropped_again_since_and_names_one_taken_out_of_failed(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_a_dog_and_a_cat(sandbox)
    sandbox.drop("dog.txt", "a dog\nseed: 3\n")  # fixed and dropped again: the old failure is over
    assert sandbox.drain().ok
    (sandbox.failed / "cat.txt").unlink()
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    failures = json.loads(capsys.readouterr().out)["recent_failures"]
    assert {failure["relpath"]: failure["dropped_again"] for failure in failures} == {
        "dog.txt": True,
        "cat.txt": False,
    }

    assert _retry(sandbox, "--all-failed") == 1

    err = " ".join(capsys.readouterr().err.split())
    assert "not retried: cat.txt: the files of cat.txt are no longer in" in err
    assert "not retried: dog.txt" not in err
    assert sandbox.journal_rows("SELECT state FROM jobs ORDER BY id") == [("failed",), ("failed",), ("done",)]


def test_all_failed_with_nothing_failed_says_so(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox.drop("dog.txt", "a dog\nseed: 3\n")
    assert sandbox.drain().ok
    assert _retry(sandbox, "--all-failed") == 0
    assert "no failed jobs to retry" in capsys.readouterr().out


def test_several_names_retry_each_and_report_the_ones_that_could_not_be(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    _fail_a_dog_and_a_cat(sandbox)

    assert _retry(sandbox, "dog.txt", "nothing-like-this", "cat.txt") == 1

    captured = capsys.readouterr()
    assert captured.out.count("queued again") == 2
    assert "not retried: nothing-like-this: no job or refused file matches" in " ".join(captured.err.split())
    assert sandbox.journal_rows("SELECT state FROM jobs ORDER BY id") == [("queued",), ("queued",)]


def test_a_name_and_all_failed_together_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(SystemExit):
        _retry(sandbox, "dog.txt", "--all-failed")
