"""The command line, as a user runs it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
from loguru import logger

from fooocusd.cli import main
from fooocusd.jobs.loader import parse_job_file
from fooocusd.journal import Journal
from fooocusd.service import free_space
from fooocusd.service.doctor import run_checks
from fooocusd.service.state_lock import state_folder_lock
from fooocusd.settings import load_settings
from tests.daemon_harness import REPO, Sandbox
from tests.test_journal_helpers import add_input


def _run(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fooocusd.cli", *args, "--config", str(box.config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_config_show_prints_each_value_and_its_source(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "show", "--config", str(sandbox.config), "--settle-seconds", "4"]) == 0
    out = capsys.readouterr().out
    assert "intake.settle_seconds" in out and "cli" in out
    assert "engine.model" in out and "tiny-random" in out and "file:" in out
    assert "journal.max_attempts" in out and "default" in out


@pytest.mark.parametrize(
    "order",
    [
        ["--config", "{config}", "--settle-seconds", "4", "config", "show"],
        ["config", "--config", "{config}", "--settle-seconds", "4", "show"],
        ["config", "show", "--config", "{config}", "--settle-seconds", "4"],
        ["--config", "{config}", "config", "show", "--settle-seconds", "4"],
    ],
    ids=["before-the-command", "between-config-and-show", "after-show", "split"],
)
def test_settings_flags_count_wherever_they_stand_on_the_command_line(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], order: list[str]
) -> None:
    argv = [arg.format(config=sandbox.config) for arg in order]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"config file: {sandbox.config}" in out
    assert "tiny-random" in out
    settle_row = next(line for line in out.splitlines() if "intake.settle_seconds" in line)
    assert "4" in settle_row and "cli" in settle_row


@pytest.mark.parametrize(
    "command",
    [["status"], ["submit", "--prompt", "a fox"], ["styles"], ["presets"], ["wildcards"], ["models", "list"]],
    ids=lambda command: " ".join(command),
)
def test_every_command_takes_the_settings_flags_after_it_as_the_help_says(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    # One shell alias with the daemon's flags serves every command.
    flags = ["--model", "tiny-random", "--device", "cpu", "--settle-seconds", "0.5", "--polling", "never"]
    assert main([*command, *flags, "--config", str(sandbox.config)]) == 0
    assert "error" not in capsys.readouterr().err


def test_missing_model_says_where_to_put_one_and_exits_non_zero(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.write_config()
    text = sandbox.config.read_text().replace('model = "tiny-random"', 'model = ""')
    sandbox.config.write_text(text)
    code = main(["once", "--no-progress", "--config", str(sandbox.config)])
    stderr = capsys.readouterr().err
    assert code != 0
    assert str(sandbox.root / "models") in stderr
    assert "engine.model" in stderr
    assert sandbox.images() == []


def test_refuses_to_start_with_the_outbox_inside_the_inbox(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["once", "--no-progress", "--config", str(sandbox.config), "--outbox", str(sandbox.inbox / "out")]
    )
    stderr = capsys.readouterr().err
    assert code != 0
    assert "inside" in stderr and str(sandbox.inbox) in stderr


def test_submit_prompt_drops_a_txt_job_into_the_inbox(sandbox: Sandbox) -> None:
    assert main(["submit", "--prompt", "A red kite, windy beach!", "--config", str(sandbox.config)]) == 0
    [dropped] = sandbox.files(sandbox.inbox)
    assert dropped.name.startswith("a-red-kite-windy-beach-") and dropped.suffix == ".txt"
    assert dropped.read_text() == "A red kite, windy beach!\n"
    assert [p for p in sandbox.inbox.iterdir() if p.name.startswith(".")] == []


def test_submit_prompt_with_set_options_writes_a_job_that_reads_back_as_given(sandbox: Sandbox) -> None:
    command = ["submit", "--config", str(sandbox.config), "--prompt", "model: a woman on\na catwalk"]
    assert main([*command, "--set", "seed=5", "--set", "Images = 2"]) == 0
    [dropped] = sandbox.files(sandbox.inbox)
    # "model:" would read as the model option; the escape keeps it prompt text, on one line.
    assert dropped.read_text() == "prompt: model: a woman on a catwalk\nseed: 5\nImages: 2\n"
    [spec] = parse_job_file(dropped, max_job_file_bytes=10_000)
    assert (spec.prompt, spec.seed, spec.images) == ("model: a woman on a catwalk", 5, 2)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["sed=5"], "--set 'sed=5' is not KEY=VALUE with a job option as KEY — did you mean 'seed'?"),
        (["seed"], "--set 'seed' is not KEY=VALUE"),
        (["prompt=x"], "--set 'prompt=x' is not KEY=VALUE"),
        (["image=cat.png"], "--set image names a picture"),
        (["seed=banana"], "Where: --set seed=banana"),
    ],
)
def test_submit_prompt_refuses_a_set_option_that_cannot_work_and_writes_nothing(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], options: list[str], said: str
) -> None:
    command = ["submit", "--config", str(sandbox.config), "--prompt", "a fox"]
    assert main([*command, *(f"--set={option}" for option in options)]) == 2
    assert said in " ".join(capsys.readouterr().err.split())
    assert sandbox.files(sandbox.inbox) == []


def test_submit_prompt_with_a_pasted_recipe_is_named_after_its_prompt_and_says_which_set_is_wrong(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = "Steps: 12, Sampler: Euler a, CFG scale: 5, Seed: 9"
    recipe = f"a lighthouse at dusk\nNegative prompt: blurry\n{settings}"
    command = ["submit", "--config", str(sandbox.config), "--prompt", recipe]
    assert main([*command, "--set", "images=2", "--set", "seed=banana"]) == 2
    assert "Where: --set seed=banana" in " ".join(capsys.readouterr().err.split())
    assert main([*command, "--set", "images=2"]) == 0
    [dropped] = sandbox.files(sandbox.inbox)
    assert dropped.name.startswith("a-lighthouse-at-dusk-2")
    [spec] = parse_job_file(dropped, max_job_file_bytes=10_000)
    assert (spec.prompt, spec.negative, spec.steps, spec.seed, spec.images) == (
        "a lighthouse at dusk",
        "blurry",
        12,
        9,
        2,
    )


def test_submit_dry_run_shows_what_each_job_would_run_with_and_writes_nothing(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path_factory.mktemp("src")
    job = folder / "fox.txt"
    job.write_text(
        "a red fox\nstyles: Film Noir\nimages: 2\nnote: v2\n---\na lighthouse\nseed: 7\naspect: 16:9\n"
    )
    command = ["submit", str(job), "--subdir", "realistic", "--dry-run", "--config", str(sandbox.config)]
    assert main(command) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "LoRAs: SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors 0.25 note: v2 job 2" in out
    assert "would submit realistic/fox.txt (--dry-run: nothing was written)" in out
    assert "job 1 (preset 'realistic', text to image): prompt: a red fox negative: painting," in out
    assert "styles: Film Noir 2 image(s) from a random seed, 896×1152, 30 steps (speed), cfg 3," in out
    assert "1 image(s) from seed 7, 1344×768" in out and "model: tiny-random;" in out
    assert "LoRAs: SDXL_FILM_PHOTOGRAPHY_STYLE_V1.safetensors 0.25" in out  # the preset's
    assert not sandbox.inbox.exists() or sandbox.files(sandbox.inbox) == []

    shutil.copy(REPO / "inbox_example" / "garden-shed.png", folder / "fox.png")  # pairs by name
    assert main([*command, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["would_submit"] == "realistic/fox.txt"
    assert [(job["image"], job["image_action"], job["size"]) for job in report["jobs"]] == [
        ("fox.png", "vary_subtle", "from the image"),
        ("fox.png", "vary_subtle", "from the image"),
    ]
    prompt = ["submit", "--prompt", "a cat <lora:ink:0.5>", "--set", "seed=5", "--dry-run", "--json"]
    assert main([*prompt, "--config", str(sandbox.config)]) == 0
    [cat] = json.loads(capsys.readouterr().out)["jobs"]
    assert cat["seed"] == 5 and cat["loras"] == [{"name": "ink", "weight": 0.5}]  # the prompt's tag
    assert not sandbox.inbox.exists() or sandbox.files(sandbox.inbox) == []
    assert main(["submit", str(job), "--dry-run", "--wait", "--config", str(sandbox.config)]) == 2


def test_submit_prints_the_path_it_wrote_whole_on_one_line(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scripts read the path back from the output, so it must never be wrapped."""
    subdir = "a-folder-name-long-enough-that-the-whole-path-is-wider-than-a-terminal"
    command = ["submit", "--prompt", "a red kite over a windy beach at dusk", "--subdir", subdir]
    assert main([*command, "--config", str(sandbox.config)]) == 0
    [dropped] = sandbox.files(sandbox.inbox / subdir)
    assert len(str(dropped)) > 120
    assert f"submitted {dropped}\n" in capsys.readouterr().out

    assert main(["submit", "--prompt", "a kite", "--subdir", "[wip]", "--config", str(sandbox.config)]) == 0
    [dropped] = sandbox.files(sandbox.inbox / "[wip]")
    assert f"submitted {dropped}\n" in capsys.readouterr().out, "brackets in a name are not markup"


def test_submit_file_into_a_subfolder_never_overwrites(sandbox: Sandbox, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path_factory.mktemp("src") / "job.txt"
    source.write_text("a cat\n")
    for _ in range(2):
        assert main(["submit", str(source), "--subdir", "portrait", "--config", str(sandbox.config)]) == 0
    assert sorted(p.name for p in (sandbox.inbox / "portrait").iterdir()) == ["job-1.txt", "job.txt"]


def test_submit_warns_of_a_model_file_the_job_lacks_and_submits_it_all_the_same(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path_factory.mktemp("src") / "job.txt"
    source.write_text("a cat\nloras: sdxl_lcm_lora:0.5\n---\na dog\n")
    assert main(["submit", str(source), "--config", str(sandbox.config)]) == 0

    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert "warning: job.txt, job 1, needs a model file that is not installed: LoRA sdxl_lcm_lora" in err
    assert "run `fooocusd models fetch sdxl_lcm_lora`" in err
    assert "job 2" not in err
    assert f"submitted {sandbox.inbox / 'job.txt'}" in captured.out
    assert (sandbox.inbox / "job.txt").exists()


def test_an_abbreviated_flag_is_refused_rather_than_taken_for_a_longer_one(
    sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """`submit FILE --model x` once went to --models-dir, and `--inb` to --inbox."""
    source = tmp_path_factory.mktemp("src") / "job.txt"
    source.write_text("a cat\n")
    with pytest.raises(SystemExit) as caught:
        main(["submit", str(source), "--models", "elsewhere", "--config", str(sandbox.config)])
    assert caught.value.code == 2
    assert "unrecognized arguments: --models elsewhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["status", "--inb", str(sandbox.inbox), "--config", str(sandbox.config)])
    assert not list(sandbox.inbox.iterdir())


@pytest.mark.parametrize(
    ("name", "subdir", "said"),
    [
        ("notes.pdf", "", "'.pdf' files are not accepted"),
        (".draft.txt", "", "would never pick up .draft.txt: hidden file"),
        ("job.txt~", "", "would never pick up job.txt~"),
        ("job.txt", "@eaDir", "would never pick up @eaDir/job.txt: inside a folder that is ignored"),
        ("job.sync-conflict-20260101-101010-ABCDEF1.txt", "", "Syncthing conflict copy"),
    ],
    ids=["unsupported", "hidden", "editor-backup", "ignored-folder", "conflict-copy"],
)
def test_submit_refuses_a_file_the_daemon_would_ignore_or_refuse_and_writes_nothing(
    sandbox: Sandbox,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    name: str,
    subdir: str,
    said: str,
) -> None:
    source = tmp_path_factory.mktemp("src") / name
    source.write_text("a cat\n")
    argv = ["submit", str(source), "--config", str(sandbox.config)] + (["--subdir", subdir] if subdir else [])
    assert main(argv) == 2
    stderr = " ".join(capsys.readouterr().err.split())
    assert said in stderr and "How to fix" in stderr
    assert not sandbox.inbox.exists() or list(sandbox.inbox.rglob("*")) == []  # no file, no folder


def test_status_before_the_first_start_shows_the_waiting_inbox_and_says_there_is_no_journal_yet(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "--prompt", "a fox", "--config", str(sandbox.config)]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(sandbox.config)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "no journal yet at" in out and "inbox: 1 file(s) not picked up yet" in out
    assert not (sandbox.state / "journal.sqlite3").exists()
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["journal"] is None and report["counts"]["queued"] == 0 and report["running"] == []
    assert report["inbox_waiting"]["files"] == 1


def test_status_warns_once_per_disk_when_the_outbox_and_state_disk_is_low_on_room(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(free_space, "LOW_FREE_BYTES", 0)  # no disk is low
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    assert json.loads(capsys.readouterr().out)["low_disk"] == []
    monkeypatch.setattr(free_space, "LOW_FREE_BYTES", 2**62)  # more than any disk here has
    assert main(["status", "--config", str(sandbox.config)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("disk: only") == 1, "outbox and state share the test's disk: said once"
    assert f"free on the disk that holds the outbox ({sandbox.outbox})" in out
    assert "the daemon waits for room (nothing fails), so free some space" in out
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    [low] = json.loads(capsys.readouterr().out)["low_disk"]
    assert low["folder"] == "outbox" and low["free_bytes"] > 0


def test_the_daemon_warns_at_start_when_the_outbox_disk_is_low_on_room(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    monkeypatch.setattr(free_space, "LOW_FREE_BYTES", 2**62)  # more than any disk here has
    assert sandbox.drain().ok
    [warning] = [line for line in logged if line.startswith("only ")]
    assert f"free on the disk that holds the outbox ({sandbox.outbox})" in warning
    assert "the daemon waits for room" in warning


def test_status_json_reports_counts_failures_and_refused_files(sandbox: Sandbox) -> None:
    sandbox.drop("good.txt", "a dog\nseed: 1\n")
    sandbox.drop("bad.txt", "a dog\nmodel: not-downloaded-yet\n")  # fails when it runs
    sandbox.drop("broken.toml", 'prompt = "unterminated\n')
    assert not sandbox.drain().ok
    result = _run(sandbox, "status", "--json")  # a separate process, as against a running daemon
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["counts"]["done"] == 1 and report["counts"]["failed"] == 1
    [failure] = report["recent_failures"]
    assert failure["relpath"] == "bad.txt" and "not-downloaded-yet" in failure["error"]
    [refusal] = report["recent_refusals"]
    assert refusal["detail"].startswith("broken.toml is not valid TOML"), refusal["detail"]
    assert refusal["detail"].endswith("(line 1, column 23)"), refusal["detail"]


def test_refused_files_are_named_once_with_their_folder_and_place(sandbox: Sandbox) -> None:
    sandbox.drop("portrait/bad.toml", 'prompt = "a cat"\nsteps = "many"\n')
    (sandbox.inbox / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert not sandbox.drain().ok
    rows = sandbox.journal_rows("SELECT detail FROM events WHERE kind = 'refused'")
    details = sorted(detail for (detail,) in rows)
    assert details == [
        "latin1.txt is not valid UTF-8 text (byte 0xe9 on line 1)",
        "portrait/bad.toml: 'steps' = 'many' is not valid: expected a whole number (key 'steps')",
    ]


def test_status_shows_progress_while_a_daemon_runs_and_interrupted_jobs_when_none_does(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.state.mkdir(parents=True, exist_ok=True)
    with Journal.open(sandbox.state / "journal.sqlite3", owner="test") as journal:
        add_input(journal, sandbox.root, "first.txt")
        add_input(journal, sandbox.root, "second.txt")
        first, second = journal.claim_next_job(60), journal.claim_next_job(60)
        assert first is not None and second is not None
        journal.heartbeat(first.id, 30, 30, 60)
        journal.heartbeat(second.id, 3, 30, 60)

    with state_folder_lock(sandbox.state):  # as a running daemon holds it
        assert main(["status", "--config", str(sandbox.config)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"running: job {first.id} first.txt — step 30/30 (decoding and saving)" in out
    assert f"running: job {second.id} second.txt — step 3/30 (10%)" in out

    assert main(["status", "--config", str(sandbox.config)]) == 0  # the daemon has gone
    out = " ".join(capsys.readouterr().out.split())
    assert "2 job(s) wait for it (`fooocusd run`, or `systemctl start fooocusd`)" in out
    assert f"interrupted: job {first.id} first.txt at step 30/30; it runs again at the next start" in out


def test_status_names_the_empty_files_waiting_in_the_inbox(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("done.txt", "a dog\nseed: 1\n")
    assert sandbox.drain().ok
    sandbox.drop("portrait/placeholder.txt", "")
    sandbox.drop("next.txt", "a cat\n")

    assert main(["status", "--config", str(sandbox.config)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "inbox: 2 file(s) not picked up yet" in out
    assert "1 of them empty" in out and "waits until it has content: portrait/placeholder.txt" in out
    assert main(["status", "--json", "--config", str(sandbox.config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inbox_waiting"] == {
        "files": 2,
        "empty": ["portrait/placeholder.txt"],
        "empty_count": 1,
        "in_editor": [],
    }


def test_retry_brings_a_failed_input_back_and_runs_it_again(sandbox: Sandbox) -> None:
    sandbox.drop("bad.txt", "a dog\nmodel: not-downloaded-yet\n")
    assert not sandbox.drain().ok
    assert (sandbox.failed / "bad.txt.error.txt").exists()
    assert main(["retry", "bad.txt", "--config", str(sandbox.config)]) == 0
    assert not (sandbox.failed / "bad.txt").exists() and not (sandbox.failed / "bad.txt.error.txt").exists()
    assert sandbox.drain().jobs_failed == 1, "it ran again, and fails again: the model is still missing"
    assert (sandbox.failed / "bad.txt").exists() and (sandbox.failed / "bad.txt.error.txt").exists()


def test_cancel_of_an_unknown_job_is_a_clear_error(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox.drop("a.txt", "a dog\nseed: 1\n")
    assert sandbox.drain().ok
    assert main(["cancel", "nothing-like-this", "--config", str(sandbox.config)]) != 0
    assert "no job matches" in capsys.readouterr().err


def test_cancel_and_retry_with_a_files_whole_name_take_all_its_jobs_and_a_prefix_of_several_asks_for_more(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(sandbox.config)]
    assert main(["pause", *config]) == 0
    sandbox.drop("many.toml", "".join(f'[[job]]\nprompt = "a fox {n}"\n' for n in range(3)))
    sandbox.drop("many-more.txt", "an owl\n")
    sandbox.drain()
    capsys.readouterr()

    assert main(["cancel", "ma", *config]) != 0
    said = capsys.readouterr().err
    assert "'ma' matches 4 jobs" in said and "a file's whole name to cancel all its jobs" in said
    assert main(["cancel", "many.toml", *config]) == 0
    assert "cancelled 3 job(s) of many.toml" in capsys.readouterr().out
    assert sorted(sandbox.journal_rows("SELECT state FROM jobs")) == [
        ("cancelled",),
        ("cancelled",),
        ("cancelled",),
        ("queued",),
    ]
    assert main(["cancel", "many", *config]) != 0
    assert "none of the 3 jobs of many is queued or running" in capsys.readouterr().err

    assert main(["retry", "many.toml", *config]) == 0  # all of them, together
    assert "many.toml: jobs 1, 2, 3 queued again" in capsys.readouterr().out
    assert sorted(sandbox.journal_rows("SELECT state FROM jobs")) == [("queued",)] * 4
    assert main(["retry", "many", *config]) != 0
    assert "none of the 3 jobs of many failed or was cancelled; nothing to retry" in capsys.readouterr().err


def test_config_check_says_a_good_file_is_valid_and_refuses_what_a_reload_would(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    check = ["config", "check", "--config", str(sandbox.config)]
    assert main(check) == 0
    assert f"{sandbox.config}: valid; model tiny-random" in " ".join(capsys.readouterr().out.split())

    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace('performance = "speed"', 'styles = ["Nope"]'))
    assert main(check) == 2
    assert "unknown style: 'Nope'" in capsys.readouterr().err

    sandbox.config.write_text(text.replace('performance = "speed"', 'performance = "lightning"'))
    assert main(check) == 0, "a missing LoRA is a warning, as at start"
    captured = capsys.readouterr()
    assert "fooocusd models fetch sdxl_lightning_4step_lora" in " ".join(captured.err.split())
    assert "valid" in captured.out


def test_doctor_reports_each_check(sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["doctor", "--config", str(sandbox.config)])
    out = capsys.readouterr().out
    for check in ("torch", "speed settings", "folder layout", "inbox folder", "model", "inotify"):
        assert check in out
    assert code == 0, out


def test_doctor_reports_the_journals_size_and_whether_it_forgets_old_files(sandbox: Sandbox) -> None:
    def journal_check() -> str:
        [check] = [check for check in run_checks(sandbox.settings()) if check.name == "journal"]
        assert check.level == "ok", check.detail
        return check.detail

    assert journal_check().endswith("does not exist yet; the daemon creates it at its first start")
    sandbox.drop("fox.txt", "a fox\nimages: 2\n---\nan owl\n")
    assert sandbox.drain().ok
    detail = journal_check()
    assert " MiB, 2 jobs, the oldest dropped 20" in detail
    assert detail.endswith("it forgets files finished over 90 days ago")
    sandbox.write_config("[journal]\nkeep_days = 0\n")
    assert journal_check().endswith("journal.keep_days = 0: it keeps everything and grows without bound")
    (sandbox.state / "journal.sqlite3").write_bytes(b"not a database" * 100)
    [broken] = [check for check in run_checks(sandbox.settings()) if check.name == "journal"]
    assert broken.level == "fail"


def test_doctor_calls_the_tiny_model_a_test_model_and_finds_the_default_files(sandbox: Sandbox) -> None:
    checks = {check.name: check for check in run_checks(sandbox.settings())}
    assert checks["model"].level == "warn" and "random weights" in checks["model"].detail
    assert checks["default files"].level == "ok"


def test_doctor_and_the_start_warn_when_the_default_performance_lacks_its_lora(sandbox: Sandbox) -> None:
    text = sandbox.config.read_text()
    sandbox.config.write_text(text.replace('performance = "speed"', 'performance = "lightning"'))
    checks = {check.name: check for check in run_checks(sandbox.settings())}
    assert checks["default files"].level == "warn"
    assert "fooocusd models fetch sdxl_lightning_4step_lora" in checks["default files"].detail

    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    try:
        assert sandbox.drain().ok
    finally:
        logger.remove(sink)
    assert any("sdxl_lightning_4step_lora.safetensors" in line for line in warnings)


def test_doctor_prints_a_failing_checks_advice_whole_brackets_included(
    sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--config", str(sandbox.config), "--model", ""]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "FAIL" in out and "[engine]" in out


def test_doctor_says_what_the_auto_speed_settings_become_here(sandbox: Sandbox) -> None:
    settings = load_settings(sandbox.config, environ={}).settings
    speed = next(check for check in run_checks(settings) if check.name == "speed settings")
    assert speed.level == "ok"
    assert speed.detail.startswith(
        "cpu: float32, vram high, attention sdpa (auto; timed on NVIDIA GPUs only), compile off, "
        "CUDA graphs off, batches of 1, fp8 off, warm-up render off, decode beside the next render off"
    )


def test_doctor_tells_a_gpu_that_lacks_flashattention_4_what_it_would_bring(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fooocusd.engine import flash4_attention

    hint = "FlashAttention 4 would make images faster on this GPU: pip install 'fooocusd[flash4]'"
    monkeypatch.setattr(flash4_attention, "install_hint", lambda device: hint)
    settings = load_settings(sandbox.config, environ={}).settings
    speed = next(check for check in run_checks(settings) if check.name == "speed settings")
    assert speed.level == "ok" and speed.detail.endswith("; " + hint)
    fixed = load_settings(sandbox.config, environ={"FOOOCUSD_ENGINE__ATTENTION": "sdpa"}).settings
    speed = next(check for check in run_checks(fixed) if check.name == "speed settings")
    assert hint not in speed.detail  # attention chosen by hand: no advice about auto's candidates


def test_log_json_writes_one_json_object_per_line(sandbox: Sandbox) -> None:
    sandbox.drop("a.txt", "a dog\nseed: 1\n")
    result = _run(sandbox, "once", "--no-progress", "--log-json")
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any("queued a.txt" in record["text"] for record in records)


def test_once_names_the_empty_files_it_leaves_in_the_inbox(sandbox: Sandbox) -> None:
    sandbox.drop("a.txt", "a dog\nseed: 1\n")
    sandbox.drop("sub/placeholder.toml", "")
    result = _run(sandbox, "once", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 job(s) done" in result.stdout and "1 empty file(s) left in the inbox" in result.stdout
    assert "left in the inbox: sub/placeholder.toml (empty" in result.stderr
    assert (sandbox.inbox / "sub" / "placeholder.toml").exists()


def test_watchdogs_stop_race_message_is_dropped_and_its_other_errors_kept() -> None:
    from fooocusd.service.logs import _not_inotify_stop_race

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(
            "watchdog.observers.inotify", logging.ERROR, __file__, 1, message, None, None
        )

    assert not _not_inotify_stop_race(
        record("InotifyEmitter.queue_events() called when the thread is inactive")
    )
    assert _not_inotify_stop_race(record("inotify watch limit reached"))


def test_the_everyday_commands_answer_without_importing_torch_or_diffusers(sandbox: Sandbox) -> None:
    """A script calling `submit` or `status` in a loop must not pay seconds of imports each time."""
    sandbox.write_config("\n[metrics]\nenabled = true\nport = 0\n")  # its check runs at every load
    job = sandbox.root / "fox.txt"
    job.write_text("a fox\nsampler: euler\n")
    commands = ["status", "submit --prompt x", f"submit {job}", "retry --all-failed", "cancel 9"]
    commands += ["config show", "models list"]
    script = (
        "import sys\nfrom fooocusd.cli import main\n"
        f"for command in {commands!r}:\n"
        f"    main([*command.split(), '--config', {str(sandbox.config)!r}])\n"
        "print(sorted(name for name in ('torch', 'diffusers', 'transformers') if name in sys.modules))\n"
    )
    run = [sys.executable, "-c", script]
    result = subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
