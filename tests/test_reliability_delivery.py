"""Slow and staged deliveries through the real watcher: a file is never handed out early.

Complements tests/test_intake_watcher.py (slow writer with short pauses, rsync rename, zero-byte
placeholder): here every sync tool's staging name is written with pauses *longer* than the settle
time, which only its temp name protects, and the final file must appear once, complete.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fooocusd.intake.watcher import InboxWatcher, Ready

SETTLE = 0.2
LONG_PAUSE = 0.45  # longer than SETTLE: only the staging name keeps the file from being taken
CHUNKS = [b"a red fox in the snow\n", b"seed: 42\n", b"images: 2\n"]
CONTENT = b"".join(CHUNKS)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def watch_while(
    inbox: Path, deliver: Callable[[], None], after: float = 4 * SETTLE
) -> list[tuple[float, Ready]]:
    """Run the daemon's watch loop while ``deliver`` runs on a thread, and ``after`` seconds more.
    Returns (time handed out, Ready) pairs; the delivery's end time is appended to ``ended``."""
    watcher = InboxWatcher(inbox, settle_seconds=SETTLE, rescan_seconds=60, polling="never")
    found: list[tuple[float, Ready]] = []
    watcher.start()
    try:
        watcher.poll()
        writer = threading.Thread(target=deliver)
        writer.start()
        while writer.is_alive():
            watcher.wait(0.05)
            found += [(time.monotonic(), ready) for ready in watcher.poll()]
        writer.join()
        end = time.monotonic() + after
        while time.monotonic() < end:
            watcher.wait(0.05)
            found += [(time.monotonic(), ready) for ready in watcher.poll()]
    finally:
        watcher.stop()
    return found


def write_slowly(path: Path, pause: float) -> None:
    with open(path, "wb") as out:
        for chunk in CHUNKS:
            out.write(chunk)
            out.flush()
            time.sleep(pause)


STAGING_NAMES = {
    "syncthing": ".syncthing.fox.txt.tmp",
    "syncthing-windows": "~syncthing~fox.txt.tmp",
    "rsync": ".fox.txt.Qx81Za",
    "rclone": "fox.txt.3f9a0c1b.partial",
    "nextcloud": ".fox.txt.~1a2b3c4d",
    "winscp": "fox.txt.filepart",
    "chrome": "fox.txt.crdownload",
}


@pytest.mark.parametrize("staging", list(STAGING_NAMES.values()), ids=list(STAGING_NAMES))
def test_staged_delivery_is_handed_out_once_complete_only_after_the_rename(inbox: Path, staging: str) -> None:
    renamed_at: list[float] = []

    def deliver() -> None:
        write_slowly(inbox / staging, LONG_PAUSE)
        os.replace(inbox / staging, inbox / "fox.txt")
        renamed_at.append(time.monotonic())

    found = watch_while(inbox, deliver)

    assert [(ready.relpath, ready.size) for _, ready in found] == [("fox.txt", len(CONTENT))]
    assert found[0][0] >= renamed_at[0]


def test_firefox_placeholder_and_part_file_give_one_complete_file(inbox: Path) -> None:
    """Firefox creates an empty file under the final name, writes ``name.part``, then renames it
    over the placeholder. The placeholder must never be taken, the result exactly once."""
    renamed_at: list[float] = []

    def deliver() -> None:
        (inbox / "fox.txt").touch()
        write_slowly(inbox / "fox.txt.part", LONG_PAUSE)
        os.replace(inbox / "fox.txt.part", inbox / "fox.txt")
        renamed_at.append(time.monotonic())

    found = watch_while(inbox, deliver)

    assert [(ready.relpath, ready.size) for _, ready in found] == [("fox.txt", len(CONTENT))]
    assert found[0][0] >= renamed_at[0]


def test_writer_that_reopens_the_file_for_each_chunk_is_waited_for(inbox: Path) -> None:
    """Scanners and SMB copies close and reopen between chunks: each write restarts the clock."""
    last_write: list[float] = []

    def deliver() -> None:
        for chunk in CHUNKS:
            with open(inbox / "fox.txt", "ab") as out:
                out.write(chunk)
            last_write.append(time.monotonic())
            time.sleep(SETTLE / 2)

    found = watch_while(inbox, deliver)

    assert [(ready.relpath, ready.size) for _, ready in found] == [("fox.txt", len(CONTENT))]
    assert found[0][0] >= last_write[-1] + SETTLE


def test_writer_pausing_longer_than_settle_with_the_file_open_is_not_taken_early(inbox: Path) -> None:
    def deliver() -> None:
        write_slowly(inbox / "fox.txt", LONG_PAUSE)

    found = watch_while(inbox, deliver)

    assert [(ready.relpath, ready.size) for _, ready in found] == [("fox.txt", len(CONTENT))]
