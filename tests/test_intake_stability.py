from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.intake.stability import FileStat, StabilityTracker


class FakeClock:
    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


P = Path("/inbox/cat.png")


def stat(size: int = 10, mtime_ns: int = 1, inode: int = 7) -> FileStat:
    return FileStat(size=size, mtime_ns=mtime_ns, inode=inode)


def test_file_is_stable_only_after_settle_seconds_unchanged() -> None:
    clock = FakeClock()
    tracker = StabilityTracker(settle_seconds=2.0, clock=clock)
    assert not tracker.observe(P, stat())
    clock.advance(1.9)
    assert not tracker.observe(P, stat())
    clock.advance(0.1)
    assert tracker.observe(P, stat())


@pytest.mark.parametrize(
    "changed", [stat(size=11), stat(mtime_ns=2), stat(inode=8)], ids=["size", "mtime", "inode"]
)
def test_any_change_of_size_mtime_or_inode_restarts_the_clock(changed: FileStat) -> None:
    clock = FakeClock()
    tracker = StabilityTracker(settle_seconds=2.0, clock=clock)
    tracker.observe(P, stat())
    clock.advance(1.5)
    assert not tracker.observe(P, changed)
    clock.advance(1.5)
    assert not tracker.observe(P, changed)
    clock.advance(0.5)
    assert tracker.observe(P, changed)


def test_write_activity_restarts_the_clock_even_when_stat_looks_unchanged() -> None:
    clock = FakeClock()
    tracker = StabilityTracker(settle_seconds=2.0, clock=clock)
    tracker.observe(P, stat())
    clock.advance(1.5)
    tracker.observe(P, stat(), activity=True)
    clock.advance(1.5)
    assert not tracker.observe(P, stat())
    clock.advance(0.5)
    assert tracker.observe(P, stat())


def test_zero_byte_placeholder_is_never_stable_until_it_fills() -> None:
    clock = FakeClock()
    tracker = StabilityTracker(settle_seconds=1.0, clock=clock)
    for _ in range(50):
        assert not tracker.observe(P, stat(size=0))
        clock.advance(10)
    assert not tracker.observe(P, stat(size=500, mtime_ns=2))
    clock.advance(1.0)
    assert tracker.observe(P, stat(size=500, mtime_ns=2))


def test_a_file_that_keeps_changing_is_never_abandoned() -> None:
    clock = FakeClock()
    tracker = StabilityTracker(settle_seconds=1.0, clock=clock)
    for size in range(1, 1000):
        assert not tracker.observe(P, stat(size=size))
        clock.advance(0.5)
    assert P in tracker
    clock.advance(1.0)
    assert tracker.observe(P, stat(size=999))


def test_vanished_file_is_dropped() -> None:
    tracker = StabilityTracker(settle_seconds=1.0, clock=FakeClock())
    tracker.observe(P, stat())
    assert len(tracker) == 1
    assert not tracker.observe(P, None)
    assert P not in tracker
    assert len(tracker) == 0


def test_is_due_and_next_deadline_follow_the_last_change_and_skip_empty_files() -> None:
    clock = FakeClock(100.0)
    tracker = StabilityTracker(settle_seconds=2.0, clock=clock)
    tracker.observe(P, stat())
    tracker.observe(Path("/inbox/empty.png"), stat(size=0))
    assert tracker.next_deadline() == pytest.approx(102.0)
    assert not tracker.is_due(P)
    clock.advance(2.0)
    assert tracker.is_due(P)


def test_zero_settle_makes_a_non_empty_file_stable_at_first_sight() -> None:
    tracker = StabilityTracker(settle_seconds=0.0, clock=FakeClock())
    assert tracker.observe(P, stat())
