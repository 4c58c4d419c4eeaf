from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from watchdog.observers.polling import PollingObserver

from fooocusd.errors import ConfigError
from fooocusd.intake import watcher as watcher_module
from fooocusd.intake.ignore import Kind
from fooocusd.intake.mounts import Mount
from fooocusd.intake.watcher import InboxWatcher, Ready


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@contextmanager
def running(watcher: InboxWatcher) -> Iterator[InboxWatcher]:
    watcher.start()
    try:
        yield watcher
    finally:
        watcher.stop()


def poll_for(watcher: InboxWatcher, seconds: float) -> list[tuple[float, Ready]]:
    """Run the daemon loop for ``seconds`` of real time; return (monotonic time, Ready) pairs."""
    found: list[tuple[float, Ready]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        watcher.wait(min(0.05, max(0.0, end - time.monotonic())))
        found.extend((time.monotonic(), item) for item in watcher.poll())
    return found


def poll_until_found(watcher: InboxWatcher, count: int, limit: float = 5.0) -> list[Ready]:
    found: list[Ready] = []
    end = time.monotonic() + limit
    while len(found) < count and time.monotonic() < end:
        watcher.wait(0.05)
        found.extend(watcher.poll())
    return found


# -- deterministic tests: watcher not started, injected clock, scans only ----------------------


def test_backlog_present_at_start_is_found_and_still_gets_the_settle_wait(inbox: Path) -> None:
    (inbox / "a.toml").write_text('prompt = "a"')
    (inbox / "sub").mkdir()
    (inbox / "sub" / "b.png").write_bytes(b"png")
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=2.0, rescan_seconds=30, clock=clock)
    assert watcher.poll() == []
    assert watcher.pending() == 2
    clock.now += 1.9
    assert watcher.poll() == []
    clock.now += 0.1
    found = sorted(watcher.poll(), key=lambda r: r.relpath)
    assert [(r.relpath, r.kind) for r in found] == [("a.toml", Kind.JOB), ("sub/b.png", Kind.IMAGE)]
    assert found[1].size == 3
    assert found[1].inode == (inbox / "sub" / "b.png").stat().st_ino
    assert watcher.pending() == 0


def test_zero_byte_placeholder_is_not_taken_until_it_fills(inbox: Path) -> None:
    placeholder = inbox / "cat.png"
    placeholder.touch()
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=0.5, rescan_seconds=1, clock=clock)
    for _ in range(20):
        assert watcher.poll() == []
        clock.now += 1.0
    assert watcher.pending() == 1
    placeholder.write_bytes(b"finally some data")
    assert watcher.poll() == []  # the change restarts the settle clock
    clock.now += 0.5
    [ready] = watcher.poll()
    assert ready.size == len(b"finally some data")


def test_rescan_catches_a_file_whose_event_was_missed(inbox: Path) -> None:
    # The observer is never started, so the only way to see the file is the periodic rescan.
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=0.2, rescan_seconds=5, clock=clock)
    assert watcher.poll() == []  # initial scan: empty inbox
    (inbox / "late.toml").write_text('prompt = "late"')
    clock.now += 4.9
    assert watcher.poll() == []
    assert watcher.pending() == 0  # not seen yet
    clock.now += 0.1
    assert watcher.poll() == []  # seen by the rescan, now settling
    assert watcher.pending() == 1
    clock.now += 0.2
    assert [r.relpath for r in watcher.poll()] == ["late.toml"]


def test_each_file_is_handed_out_once_until_forgotten(inbox: Path) -> None:
    path = inbox / "a.txt"
    path.write_text("a cat")
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=0.1, rescan_seconds=1, clock=clock)
    watcher.poll()
    clock.now += 0.1
    assert len(watcher.poll()) == 1
    for _ in range(3):
        clock.now += 1
        assert watcher.poll() == []  # rescans do not hand it out again
    watcher.forget(path)
    clock.now += 1
    watcher.poll()
    clock.now += 0.1
    assert [r.relpath for r in watcher.poll()] == ["a.txt"]


def test_a_file_that_vanished_and_reappears_is_seen_again(inbox: Path) -> None:
    path = inbox / "a.txt"
    path.write_text("first")
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=0.1, rescan_seconds=1, clock=clock)
    watcher.poll()
    clock.now += 0.1
    assert len(watcher.poll()) == 1
    path.unlink()  # claimed by someone who did not call forget()
    clock.now += 1
    assert watcher.poll() == []
    path.write_text("second drop")
    clock.now += 1
    watcher.poll()
    clock.now += 0.1
    assert [r.size for r in watcher.poll()] == [len("second drop")]


def test_unsupported_and_conflict_files_are_reported_with_a_reason_after_settling(inbox: Path) -> None:
    (inbox / "report.pdf").write_bytes(b"%PDF")
    (inbox / "cat.sync-conflict-20240131-142501-ABCDEF1.png").write_bytes(b"png")
    (inbox / ".syncthing.x.png.tmp").write_bytes(b"tmp")
    (inbox / "@eaDir").mkdir()
    (inbox / "@eaDir" / "x.png").write_bytes(b"meta")
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=0.1, clock=clock)
    assert watcher.poll() == []
    clock.now += 0.1
    found = {r.relpath: r for r in watcher.poll()}
    assert set(found) == {"report.pdf", "cat.sync-conflict-20240131-142501-ABCDEF1.png"}
    assert found["report.pdf"].kind is Kind.UNSUPPORTED
    assert ".toml" in found["report.pdf"].reason
    conflict = found["cat.sync-conflict-20240131-142501-ABCDEF1.png"]
    assert conflict.kind is Kind.CONFLICT
    assert conflict.conflict_kind is Kind.IMAGE
    assert not conflict.refused


@pytest.mark.timeout(10)
def test_fifo_and_escaping_symlink_are_refused_without_blocking(inbox: Path, tmp_path: Path) -> None:
    os.mkfifo(inbox / "pipe.png")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the inbox")
    (inbox / "escape.txt").symlink_to(secret)
    (inbox / "folder-link").symlink_to(inbox)
    watcher = InboxWatcher(inbox, settle_seconds=5.0, follow_symlinks=True, clock=FakeClock())
    found = {r.relpath: r for r in watcher.poll()}  # refusals need no settle wait
    assert set(found) == {"pipe.png", "escape.txt", "folder-link"}
    assert all(r.refused and r.kind is Kind.UNSUPPORTED for r in found.values())
    assert "named pipe" in found["pipe.png"].reason
    assert "outside the inbox" in found["escape.txt"].reason
    assert "folder" in found["folder-link"].reason
    assert watcher.poll() == []  # reported once


def test_symlinks_are_refused_unless_following_is_enabled(inbox: Path) -> None:
    (inbox / "real.png").write_bytes(b"12345")
    (inbox / "link.png").symlink_to(inbox / "real.png")
    clock = FakeClock()
    strict = InboxWatcher(inbox, settle_seconds=0.1, clock=clock)
    [refused] = strict.poll()
    assert refused.relpath == "link.png"
    assert "follow_symlinks" in refused.reason

    following = InboxWatcher(inbox, settle_seconds=0.1, follow_symlinks=True, clock=clock)
    assert following.poll() == []
    clock.now += 0.1
    found = {r.relpath: r for r in following.poll()}
    assert found["link.png"].kind is Kind.IMAGE
    assert not found["link.png"].refused
    assert found["link.png"].size == 5


def test_start_refuses_a_missing_inbox_with_a_hint(tmp_path: Path) -> None:
    watcher = InboxWatcher(tmp_path / "nope")
    with pytest.raises(ConfigError) as caught:
        watcher.start()
    assert caught.value.hint


# -- real watchdog events, real time ---------------------------------------------------------


def test_slow_writer_is_not_ready_until_it_stops_writing(inbox: Path) -> None:
    watcher = InboxWatcher(inbox, settle_seconds=0.5, rescan_seconds=60, polling="never")
    last_write: list[float] = []

    def slow_writer() -> None:
        with open(inbox / "slow.png", "ab") as out:
            for _ in range(6):  # every 0.3 s for ~1.5 s
                out.write(b"x" * 1000)
                out.flush()
                last_write.append(time.monotonic())
                time.sleep(0.3)

    with running(watcher):
        watcher.poll()
        writer = threading.Thread(target=slow_writer)
        writer.start()
        found = poll_for(watcher, 3.0)
        writer.join()
    assert len(found) == 1
    seen_at, ready = found[0]
    assert ready.size == 6000
    assert seen_at >= last_write[-1] + 0.5
    assert seen_at < last_write[-1] + 1.5


def test_rename_into_place_yields_one_ready_for_the_final_name_only(inbox: Path) -> None:
    watcher = InboxWatcher(inbox, settle_seconds=0.2, rescan_seconds=60, polling="never")
    with running(watcher):
        assert watcher.poll() == []  # initial scan done before the file arrives
        temp = inbox / ".cat.png.Xa81Qz"  # rsync-style temp name
        with open(temp, "wb") as out:
            for _ in range(5):
                out.write(b"p" * 4096)
                out.flush()
                time.sleep(0.05)
        os.rename(temp, inbox / "cat.png")
        found = poll_for(watcher, 1.0)
    assert [(r.relpath, r.size) for _, r in found] == [("cat.png", 5 * 4096)]


def test_folder_moved_into_the_inbox_is_scanned_by_events(inbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "album"
    (outside / "deep").mkdir(parents=True)
    (outside / "one.toml").write_text('prompt = "one"')
    (outside / "deep" / "two.png").write_bytes(b"two")
    watcher = InboxWatcher(inbox, settle_seconds=0.2, rescan_seconds=60, polling="never")
    with running(watcher):
        assert watcher.poll() == []
        os.rename(outside, inbox / "album")
        found = poll_until_found(watcher, 2, limit=3.0)
    assert sorted(r.relpath for r in found) == ["album/deep/two.png", "album/one.toml"]


def test_wait_returns_early_when_a_file_arrives(inbox: Path) -> None:
    watcher = InboxWatcher(inbox, settle_seconds=0.2, rescan_seconds=60, polling="never")
    with running(watcher):
        watcher.poll()
        timer = threading.Timer(0.1, (inbox / "a.txt").write_text, args=("hello",))
        timer.start()
        started = time.monotonic()
        assert watcher.wait(5.0) is True
        assert time.monotonic() - started < 2.0
        timer.join()
        assert [r.relpath for r in poll_until_found(watcher, 1, limit=2.0)] == ["a.txt"]


def test_metadata_touch_after_hand_out_does_not_hand_it_out_again(inbox: Path) -> None:
    path = inbox / "a.txt"
    watcher = InboxWatcher(inbox, settle_seconds=0.1, rescan_seconds=60, polling="never")
    with running(watcher):
        watcher.poll()
        path.write_text("a cat")
        assert len(poll_until_found(watcher, 1, limit=2.0)) == 1
        os.chmod(path, 0o600)
        os.utime(path)
        assert poll_for(watcher, 0.5) == []


def test_file_replaced_by_a_new_one_after_hand_out_is_seen_as_new(inbox: Path) -> None:
    path = inbox / "a.txt"
    watcher = InboxWatcher(inbox, settle_seconds=0.1, rescan_seconds=60, polling="never")
    with running(watcher):
        watcher.poll()
        path.write_text("first")
        [first] = poll_until_found(watcher, 1, limit=2.0)
        (inbox / ".a.txt.tmp1234").write_text("second version")
        os.replace(inbox / ".a.txt.tmp1234", path)
        [second] = poll_until_found(watcher, 1, limit=2.0)
    assert second.inode != first.inode
    assert second.size == len("second version")


def test_polling_mode_sees_new_files_before_the_next_rescan(inbox: Path) -> None:
    watcher = InboxWatcher(
        inbox, settle_seconds=0.1, rescan_seconds=60, polling="always", poll_interval_seconds=0.1
    )
    with running(watcher):
        assert "polling" in watcher.watch_mode
        watcher.poll()
        (inbox / "a.toml").write_text('prompt = "a"')
        found = poll_until_found(watcher, 1, limit=3.0)
    assert [r.relpath for r in found] == ["a.toml"]


def test_ignored_temp_files_never_show_up_even_with_events(inbox: Path) -> None:
    watcher = InboxWatcher(inbox, settle_seconds=0.1, rescan_seconds=0.3, polling="never")
    with running(watcher):
        watcher.poll()
        (inbox / ".syncthing.cat.png.tmp").write_bytes(b"x")
        (inbox / "cat.png.crdownload").write_bytes(b"x")
        (inbox / "@eaDir").mkdir()
        (inbox / "@eaDir" / "cat.png").write_bytes(b"x")
        assert poll_for(watcher, 0.6) == []
        assert watcher.pending() == 0


def test_inbox_on_a_network_mount_is_polled_automatically(inbox: Path) -> None:
    mounts = [Mount(Path("/"), "ext4", "/dev/sda1"), Mount(Path(os.path.realpath(inbox)), "nfs4", "nas:/x")]
    watcher = InboxWatcher(
        inbox, settle_seconds=0.1, rescan_seconds=60, poll_interval_seconds=0.1, mounts=mounts
    )
    with running(watcher):
        assert watcher.watches() == [(inbox, True)]
        assert "NFS" in watcher.watch_mode
        watcher.poll()
        (inbox / "a.toml").write_text('prompt = "a"')
        assert [r.relpath for r in poll_until_found(watcher, 1, limit=3.0)] == ["a.toml"]


def test_network_share_mounted_inside_a_local_inbox_gets_its_own_polling_watch(inbox: Path) -> None:
    (inbox / "nas").mkdir()
    real = Path(os.path.realpath(inbox))
    mounts = [Mount(Path("/"), "ext4", "/dev/sda1"), Mount(real / "nas", "cifs", "//host/share")]
    watcher = InboxWatcher(inbox, rescan_seconds=60, mounts=mounts)
    with running(watcher):
        assert watcher.watches() == [(inbox, False), (inbox / "nas", True)]


def test_native_watch_failure_falls_back_to_polling(inbox: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenObserver(PollingObserver):
        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watcher_module, "Observer", BrokenObserver)
    watcher = InboxWatcher(
        inbox, polling="never", poll_interval_seconds=0.1, settle_seconds=0.1, rescan_seconds=60
    )
    with running(watcher):
        assert watcher.watches() == [(inbox, True)]
        assert "native events unavailable" in watcher.watch_mode
        watcher.poll()
        (inbox / "a.png").write_bytes(b"png")
        assert [r.relpath for r in poll_until_found(watcher, 1, limit=3.0)] == ["a.png"]


def test_an_inbox_that_vanishes_is_said_once_and_watched_anew_when_it_is_back(
    inbox: Path, tmp_path: Path
) -> None:
    clock = FakeClock()
    said: list[str] = []
    sink = watcher_module.logger.add(
        lambda message: said.append(str(message)), level="INFO", format="{message}"
    )
    watcher = InboxWatcher(inbox, settle_seconds=0.2, rescan_seconds=30, polling="never", clock=clock)
    try:
        with running(watcher):
            assert watcher.poll() == []
            inbox.rename(tmp_path / "unmounted")
            for _ in range(2):
                clock.now += 30
                assert watcher.poll() == []
            assert sum("is gone (a share unmounted" in line for line in said) == 1
            inbox.mkdir()
            clock.now += 30
            assert watcher.poll() == []
            assert any(line.endswith("is back: watching it anew\n") for line in said)
            (inbox / "new.txt").write_text("a fox")
            found: list[Ready] = []
            for _ in range(40):  # 12 s of the fake clock: native events, long before the next rescan
                watcher.wait(0.05)
                clock.now += 0.3
                found.extend(watcher.poll())
                if found:
                    break
            assert [ready.relpath for ready in found] == ["new.txt"]
    finally:
        watcher_module.logger.remove(sink)


def test_a_job_file_open_in_an_editor_is_taken_once_the_editor_closes_it(
    inbox: Path, logged: list[str]
) -> None:
    (inbox / "cat.txt").write_text("a cat, first draft")
    swap = inbox / ".cat.txt.swp"  # vim's, beside the file while it is open
    swap.write_bytes(b"b0VIM 9.1")
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=1.0, rescan_seconds=30, clock=clock)
    for _ in range(10):  # saved, and still open: a draft
        assert watcher.poll() == []
        clock.now += 5.0
    assert [line.rstrip() for line in logged if "open in" in line] == [
        "cat.txt is open in vim or nano (.cat.txt.swp): it is taken once the editor closes it"
    ]
    (inbox / "cat.txt").write_text("a cat on a windowsill, final")
    swap.unlink()  # :wq
    assert watcher.poll() == []  # settles from here
    clock.now += 1.0
    [ready] = watcher.poll()
    assert ready.relpath == "cat.txt" and ready.size == len("a cat on a windowsill, final")


def test_an_editor_mark_left_behind_by_a_crash_is_given_up_on(inbox: Path, logged: list[str]) -> None:
    (inbox / "owl.toml").write_text('prompt = "an owl"')
    (inbox / ".#owl.toml").symlink_to("someone@host.4242:1700000000")  # emacs's lock: a dangling link
    (inbox / "fox.png").write_bytes(b"png")
    (inbox / ".fox.png.swp").write_bytes(b"b0VIM")  # pictures are not held by editor marks
    clock = FakeClock()
    watcher = InboxWatcher(inbox, settle_seconds=1.0, rescan_seconds=30, clock=clock, editor_wait_seconds=60)
    assert watcher.poll() == []
    clock.now += 1.0
    assert [ready.relpath for ready in watcher.poll()] == ["fox.png"]
    clock.now += 58.0
    assert watcher.poll() == []
    clock.now += 1.0  # an hour by default; 60 s here
    assert [ready.relpath for ready in watcher.poll()] == ["owl.toml"]
    assert any(
        "owl.toml has been marked open by emacs (.#owl.toml) for 60 s; taking it" in line for line in logged
    )
