"""Every bad input ends in failed/ with a plain-language reason, and the daemon carries on."""

from __future__ import annotations

import io
import os
import time

from loguru import logger
from PIL import Image

from tests.daemon_harness import RunningDaemon, Sandbox, wait_for


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    noise = Image.effect_noise((128, 128), 64).convert("RGB")  # noisy, so the file is large
    noise.save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


BAD_INPUTS: dict[str, tuple[bytes | str, str]] = {
    "broken.toml": ('prompt = "a cat\nseed = 3\n', "line"),
    "typo.toml": ('prompt = "a cat"\nnegatve = "dogs"\n', "negative"),
    "wrongtype.toml": ('prompt = "a cat"\nseed = "abc"\n', "seed"),
    "huge.txt": ("a cat " * 400_000, "limit"),
    "escape.toml": ('prompt = "a cat"\nimage = "../../etc/passwd"\n', "inbox"),
    "sneaky-name.toml": ('prompt = "a cat"\nname = "../../outside"\n', "name"),
    "unknown-style.txt": ("a cat\nstyles: Film Noir, Cinematik\n", "Cinematic"),
    "latin1.txt": ("caf\xe9 au lait".encode("latin-1"), "UTF-8"),
    "truncated.png": (_truncated_png(), "truncated"),
    "notes.pdf": (b"%PDF-1.4\n", ".txt"),
    "cat.sync-conflict-20260101-120000-ABCDEFG.txt": ("a cat", "conflict"),
}


def test_each_bad_input_gets_an_error_file_while_good_ones_still_run(sandbox: Sandbox) -> None:
    for name, (content, _) in BAD_INPUTS.items():
        sandbox.drop(name, content)
    sandbox.drop("good.txt", "a good dog\nseed: 4\n")

    summary = sandbox.drain()

    assert not summary.ok, "a run with failures is reported as failed"
    assert summary.inputs_failed == len(BAD_INPUTS)
    assert [p.name for p in sandbox.images()] == ["good_4_0.png"]
    assert (sandbox.done / "good.txt").exists()
    for name, (_, expected_word) in BAD_INPUTS.items():
        assert (sandbox.failed / name).exists(), f"{name} is not in failed/"
        report = (sandbox.failed / f"{name}.error.txt").read_text()
        assert expected_word.lower() in report.lower(), f"{name}: {report}"
        assert not (sandbox.inbox / name).exists()


def test_temporary_and_junk_names_are_left_alone(sandbox: Sandbox) -> None:
    junk = [
        ".syncthing.cat.txt.tmp",
        "cat.txt.part",
        "~$cat.txt",
        ".DS_Store",
        "Thumbs.db",
        "cat.txt.crdownload",
    ]
    for name in junk:
        (sandbox.inbox / name).write_text("a cat")
    (sandbox.inbox / "placeholder.txt").touch()  # a browser's 0-byte placeholder: waits, never blocks
    assert sandbox.drain().ok
    for name in [*junk, "placeholder.txt"]:
        assert (sandbox.inbox / name).exists()
    assert sandbox.images() == []
    assert sandbox.files(sandbox.failed) == []


def test_a_mistyped_option_in_a_dropped_txt_is_warned_about_once(sandbox: Sandbox) -> None:
    sandbox.drop("typo.txt", "a cat\nstep: 20\nseed: 1\n")
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        assert sandbox.drain().ok
    finally:
        logger.remove(sink)
    warnings = [message for message in messages if "read as prompt text" in message]
    assert len(warnings) == 1 and "typo.txt: line 2" in warnings[0] and "'steps'" in warnings[0], messages


def test_bad_inputs_wait_in_the_inbox_while_failed_cannot_be_written_and_the_daemon_carries_on(
    sandbox: Sandbox, logged: list[str]
) -> None:
    with RunningDaemon(sandbox.settings()) as running:
        wait_for(lambda: any(line.startswith("ready: ") for line in logged), what="the daemon ready")
        sandbox.failed.rmdir()
        sandbox.failed.write_text("a file where failed/ should be: a share gone, a disk full\n")
        sandbox.drop("notes.pdf", b"%PDF-1.4\n")  # refused by its type
        sandbox.drop("typo.toml", 'prompt = "a cat"\nnegatve = "dogs"\n')  # refused by its content
        sandbox.drop("good.txt", "a good dog\nseed: 4\nsteps: 2\n")
        wait_for(lambda: (sandbox.done / "good.txt").exists(), what="the good file done")
        time.sleep(4.5)  # two more rescans (every 2 s here): each tries the bad files again
        assert running.error is None, "the daemon stopped"
        assert sorted(p.name for p in sandbox.files(sandbox.inbox)) == ["notes.pdf", "typo.toml"]
        troubles = [line for line in logged if line.startswith("could not ")]
        assert len(troubles) == 2, "each file's trouble is said once, not at every rescan"
        assert any(line.startswith("could not move notes.pdf to failed/: ") for line in troubles)
        assert all("It stays in the inbox and is tried again at the next rescan" in t for t in troubles)

        sandbox.failed.unlink()
        sandbox.failed.mkdir()
        wait_for(lambda: len(sandbox.files(sandbox.failed, "*.error.txt")) == 2, what="both in failed/")
        assert running.error is None
    assert sandbox.files(sandbox.inbox) == []
    assert "negative" in (sandbox.failed / "typo.toml.error.txt").read_text(encoding="utf-8")


def test_names_that_are_not_utf8_are_renamed_then_run_with_their_picture_still_paired(
    sandbox: Sandbox, logged: list[str]
) -> None:
    sandbox.inbox.mkdir(parents=True, exist_ok=True)
    inbox = os.fsencode(sandbox.inbox)
    with open(inbox + b"/caf\xe9.txt", "w") as job:  # as unzip writes a Windows zip's names
        job.write("a cafe\nseed: 5\n")
    Image.new("RGB", (64, 64), "red").save(os.fsdecode(inbox + b"/shed-\xff.png"))
    with open(inbox + b"/shed-\xff.txt", "w") as job:
        job.write("a shed\nseed: 6\n")
    with open(inbox + b"/new\nline.txt", "w") as job:  # a newline in a name would split log lines
        job.write("a newline\nseed: 8\n")
    os.mkdir(inbox + b"/\xe9t\xe9")
    with open(inbox + b"/\xe9t\xe9/summer.txt", "w") as job:
        job.write("summer\nseed: 7\n")

    summary = sandbox.drain()

    assert summary.ok and summary.inputs_failed == 0
    assert sorted(p.relative_to(sandbox.outbox).as_posix() for p in sandbox.images()) == [
        "caf\ufffd_5_0.png",
        "new\ufffdline_8_0.png",
        "shed-\ufffd_6_0.png",
        "\ufffdt\ufffd/summer_7_0.png",
    ]
    assert sorted(p.relative_to(sandbox.done).as_posix() for p in sandbox.files(sandbox.done)) == [
        "caf\ufffd.txt",
        "new\ufffdline.txt",
        "shed-\ufffd.png",
        "shed-\ufffd.txt",
        "\ufffdt\ufffd/summer.txt",
    ]
    assert sandbox.files(sandbox.inbox) == []
    renames = [line for line in logged if "is not valid UTF-8" in line]  # one line each
    assert any(line.startswith("caf\\xe9.txt: ") and "renamed to caf\ufffd.txt" in line for line in renames)
    assert any("its folder was renamed to \ufffdt\ufffd" in line for line in renames)
    assert any(line.startswith("new\\nline.txt: its name holds a control character") for line in logged)
    assert not any("new\nline" in line for line in logged), "a log line was split by the name"


def test_bad_files_with_names_near_the_limit_end_in_failed_with_their_error_files(sandbox: Sandbox) -> None:
    broken, unsupported = "b" * 248 + ".toml", "c" * 251 + ".pdf"  # + ".error.txt": over 255 bytes
    sandbox.inbox.mkdir(parents=True, exist_ok=True)
    (sandbox.inbox / broken).write_text('prompt = "a cat')  # no temp name: it would be too long
    (sandbox.inbox / unsupported).write_bytes(b"%PDF-1.4\n")

    summary = sandbox.drain()

    assert summary.inputs_failed == 2
    assert sandbox.files(sandbox.inbox) == []
    reports = sorted(p.name for p in sandbox.files(sandbox.failed, "*.error.txt"))
    assert reports == ["b" * 240 + ".toml.error.txt", "c" * 241 + ".pdf.error.txt"]
    assert "TOML" in (sandbox.failed / reports[0]).read_text(encoding="utf-8")
