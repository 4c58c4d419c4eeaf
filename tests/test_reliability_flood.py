"""10,000 files dropped at once: every one is journaled exactly once, with bounded memory.

Drives the real watcher (its inotify queue overflows at this size; the rescan must catch up),
pairer, intake stage and journal through ``bench/intake_flood.py``, with no worker. The rate is
printed (and written by the bench script), never asserted.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.intake_flood import run_flood

FILES = 10_000
# Each file costs the intake a few hundred bytes of lasting state (the watcher's hand-out map,
# journal page cache); 64 MiB of peak-RSS growth for 10,000 files means about 6.5 KiB per file,
# far above what a correct intake needs and far below what holding file contents would cost.
PEAK_RSS_GROWTH_LIMIT = 64 * 2**20


@pytest.fixture
def fast_root(tmp_path: Path) -> Iterator[Path]:
    """On tmpfs when there is one: fsync-bound claims would otherwise make the test about the disk."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        with tempfile.TemporaryDirectory(dir=shm, prefix="fooocusd-flood-") as tmp:
            yield Path(tmp)
    else:
        yield tmp_path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_thousand_files_dropped_at_once_are_all_journaled_once_with_bounded_memory(
    fast_root: Path,
) -> None:
    result = run_flood(fast_root, FILES, timeout=500)
    print(f"intake rate: {result.files_per_second:.0f} files/s ({result.seconds:.1f} s for {FILES})")

    assert result.failed_inputs == 0
    assert result.journaled_inputs == FILES
    assert result.queued_jobs == FILES
    assert result.left_in_inbox == 0
    with sqlite3.connect(fast_root / "state" / "journal.sqlite3") as db:
        relpaths = [row[0] for row in db.execute("SELECT relpath FROM inputs")]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(relpaths) == len(set(relpaths)) == FILES, "a file was claimed twice"
    claimed = list((fast_root / "state" / "processing").rglob("*.txt"))
    assert len(claimed) == FILES
    assert result.peak_rss_growth_bytes < PEAK_RSS_GROWTH_LIMIT, (
        f"peak RSS grew by {result.peak_rss_growth_bytes / 2**20:.1f} MiB"
    )
