"""Hostile inputs: each is refused with a plain reason, nothing outside
the inbox is touched, and the daemon carries on with the good job dropped beside them.

Complements tests/test_daemon_bad_inputs.py (``name = "../../outside"``, ``image = "../../etc/passwd"``)
and tests/test_intake_watcher.py (FIFO and escaping link at the watcher level).
"""

from __future__ import annotations

import os
import stat
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest

from fooocusd.errors import ConfigError, InvalidInput
from fooocusd.jobs.loader import parse_job_file
from fooocusd.settings import load_settings
from tests.daemon_harness import Sandbox

FIFTY_MB = 50 * 2**20


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width``×``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def make_special_files(inbox: Path) -> dict[str, str]:
    """A FIFO and a character device in the inbox; returns name → expected word in the reason."""
    made: dict[str, str] = {}
    os.mkfifo(inbox / "pipe.txt")
    made["pipe.txt"] = "named pipe"
    try:
        os.mknod(inbox / "device.txt", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
        made["device.txt"] = "device"
    except PermissionError:
        pass  # no CAP_MKNOD here (containers, non-root); the FIFO still covers "not a regular file"
    return made


def test_hostile_files_are_refused_with_reasons_and_the_good_job_still_runs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("do not touch", encoding="utf-8")
    wildcards = tmp_path / "wildcards"
    wildcards.mkdir()
    for level in range(100):  # __w0__ → __w1__ → … → __w99__ → __w0__: 100 levels and a cycle
        (wildcards / f"w{level}.txt").write_text(f"deeper __w{(level + 1) % 100}__\n", encoding="utf-8")
    sandbox.write_config()
    config = sandbox.config.read_text(encoding="utf-8")
    config = config.replace("[paths]\n", f'[paths]\nwildcards = "{wildcards}"\n', 1)
    sandbox.config.write_text(config, encoding="utf-8")

    expected: dict[str, str] = {
        "escape-name.toml": "name",
        "slash-name.txt": "name",
        "bomb.png": "pixels",
        "link-out.txt": "symbolic link",
        "link-in.txt": "symbolic link",
        "wild.txt": "levels deep",
    }
    sandbox.drop("escape-name.toml", 'prompt = "a cat"\nname = "../../../tmp/owned"\n')
    sandbox.drop("slash-name.txt", "a cat\nname: sub/../../x\n")
    sandbox.drop("bomb.png", png_header_claiming(10_000, 10_000))
    sandbox.drop("real.txt", "a linked fox\nseed: 3\nsteps: 2\n")
    os.symlink(secret, sandbox.inbox / "link-out.txt")
    os.symlink(sandbox.inbox / "real.txt", sandbox.inbox / "link-in.txt")
    expected |= make_special_files(sandbox.inbox)
    sandbox.drop("wild.txt", "a fox __w0__\nseed: 9\nsteps: 2\n")

    summary = sandbox.drain()

    assert summary.inputs_failed == len(expected)
    assert secret.read_text(encoding="utf-8") == "do not touch", "a file outside the inbox was touched"
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert not Path("/tmp/owned_0.png").exists()
    for name, word in expected.items():
        report = (sandbox.failed / f"{name}.error.txt").read_text(encoding="utf-8")
        assert word in report.lower(), f"{name}: {report}"
        assert "fix" in report.lower(), f"{name} has no hint: {report}"
        assert not os.path.lexists(sandbox.inbox / name)
    assert (sandbox.failed / "link-out.txt").is_symlink(), "the link is moved, never what it points to"
    # The link into the inbox was refused, but the file it pointed to runs as itself.
    assert sorted(p.name for p in sandbox.images()) == ["real_3_0.png"]


@pytest.mark.parametrize(
    ("template", "word"),
    [
        ("../{stem}_{seed}", "leaves the outbox"),
        ("/tmp/{stem}", "separator"),
        ("{stem}\\..\\{seed}", "separator"),
        ("..{stem}", "dot"),
        ("{stem}_{secret}", "unknown field"),
    ],
)
def test_name_template_that_could_leave_the_outbox_stops_the_start(
    sandbox: Sandbox, template: str, word: str
) -> None:
    sandbox.write_config(f"[outbox]\nname_template = '{template}'\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(sandbox.config, environ={})
    assert "name_template" in caught.value.explain()
    assert word in caught.value.explain().lower()


def test_a_prompt_with_slashes_in_a_prompt_named_output_stays_in_the_outbox(sandbox: Sandbox) -> None:
    sandbox.write_config("[outbox]\nname_template = '{prompt}_{seed}'\n")
    sandbox.drop("slashed.txt", "../../etc/cron.d/evil\nseed: 1\nsteps: 2\n")
    sandbox.drop("plain.txt", "a calm sea\nseed: 2\nsteps: 2\n")

    summary = sandbox.drain()

    assert summary.jobs_failed == 0
    assert sorted(p.name for p in sandbox.images()) == ["a calm sea_2.png", "etc-cron.d-evil_1.png"]
    assert {p.parent for p in sandbox.images()} == {sandbox.outbox}
    assert not list(sandbox.root.parent.rglob("evil*"))


def test_fifty_megabyte_toml_is_refused_by_size_without_being_read(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    with open(huge, "wb") as out:  # sparse: cheap to make, but 50 MB to anyone who reads it
        out.truncate(FIFTY_MB)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as caught:
            parse_job_file(huge, max_job_file_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "limit" in caught.value.message and "intake.max_job_file_bytes" in caught.value.message
    assert peak < 1_000_000, f"{peak:,} bytes allocated while refusing it"


def test_fifty_megabyte_toml_dropped_in_the_inbox_ends_in_failed_with_the_limit(sandbox: Sandbox) -> None:
    staged = sandbox.inbox / ".huge.toml.partial"
    with open(staged, "wb") as out:
        out.write(b'prompt = "a cat"\n')
        out.truncate(FIFTY_MB)
    os.replace(staged, sandbox.inbox / "huge.toml")

    summary = sandbox.drain()

    assert summary.inputs_failed == 1
    assert (sandbox.failed / "huge.toml").stat().st_size == FIFTY_MB
    assert "limit" in (sandbox.failed / "huge.toml.error.txt").read_text(encoding="utf-8")
