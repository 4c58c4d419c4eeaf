"""Everything the daemon creates follows ``outbox.umask`` and is never executable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.daemon_harness import Sandbox


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_outputs_error_files_and_folders_follow_the_umask_and_are_never_executable(
    sandbox: Sandbox, umask: int, file_mode: int, folder_mode: int
) -> None:
    sandbox.write_config(f"[outbox]\numask = {umask:#o}\n")
    previous = os.umask(0o002)  # a laxer process umask than configured: the configured one must win
    try:
        sandbox.drop("album/good.txt", "a red fox\nseed: 1\nsteps: 2\n")
        sandbox.drop("album/bad.toml", 'prompt = "a cat"\nseed = "abc"\n')
        sandbox.drop("album/late.txt", "a red fox <lora:missing:1>\nsteps: 2\n")
        summary = sandbox.drain()
    finally:
        os.umask(previous)

    assert summary.images_written == 1
    created = [
        *sandbox.images(),
        *sandbox.sidecars(),
        sandbox.failed / "album" / "bad.toml.error.txt",  # refused at intake
        sandbox.failed / "album" / "late.txt.error.txt",  # failed while rendering
    ]
    for path in created:
        assert _mode(path) == file_mode, f"{path.name}: {oct(_mode(path))}"
        assert not _mode(path) & 0o111, f"{path.name} is executable"
    for folder in (sandbox.outbox / "album", sandbox.failed / "album", sandbox.done / "album"):
        assert _mode(folder) == folder_mode, f"{folder}: {oct(_mode(folder))}"


def test_moved_inputs_keep_their_content_and_lose_no_permission_bits_they_did_not_have(
    sandbox: Sandbox,
) -> None:
    """Inputs are renamed, not rewritten: done/ and failed/ hold the user's own file, whose mode
    is the user's choice; the daemon adds no bits (in particular no execute bit)."""
    good = sandbox.drop("good.txt", "a red fox\nseed: 1\nsteps: 2\n")
    bad = sandbox.drop("bad.toml", 'prompt = "a cat"\nseed = "abc"\n')
    good.chmod(0o640)
    bad.chmod(0o600)

    sandbox.drain()

    assert _mode(sandbox.done / "good.txt") == 0o640
    assert _mode(sandbox.failed / "bad.toml") == 0o600
