"""Intake under a flood: N small .txt files dropped at once, journaled by the real intake stage.

Runs the real ``InboxWatcher`` (native events, whose queue overflows at this size, plus the
rescan safety net), the real ``Pairer``, ``IntakeStage`` (parse, validate, sha256, claim) and
the SQLite ``Journal``, with no worker and no engine, so nothing is rendered and torch is never
imported. The loop mirrors the daemon's intake step (``Daemon._intake_once``).

Measures the intake rate (files/s from the moment all files exist until the last is claimed)
and the growth of the process's peak resident memory, then writes JSON and Markdown reports:

    python bench/intake_flood.py                      # 10,000 files → bench/results/
    python bench/intake_flood.py --files 2000 --out /tmp/flood
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fooocusd.engine.styles import load_styles
from fooocusd.intake.pairing import Pairer
from fooocusd.intake.watcher import InboxWatcher
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.journal.journal import Journal
from fooocusd.service.folders import Folders, prepare_folders
from fooocusd.service.intake_refusals import as_takeable, refusal_for
from fooocusd.service.intake_stage import IntakeStage
from fooocusd.settings import Settings, load_settings

RESULTS = Path(__file__).resolve().parent / "results"
SETTLE_SECONDS = 0.5
RESCAN_SECONDS = 1.0


@dataclass
class FloodResult:
    files: int
    journaled_inputs: int
    queued_jobs: int
    failed_inputs: int
    seconds: float
    files_per_second: float
    peak_rss_growth_bytes: int
    left_in_inbox: int
    watch_mode: str


def peak_rss_bytes() -> int:
    """The process's resident-memory high-water mark (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def write_config(root: Path) -> Path:
    config = root / "fooocusd.toml"
    names = ("inbox", "outbox", "done", "failed", "state", "models")
    paths = "\n".join(f'{name} = "{root / name}"' for name in names)
    config.write_text(
        f"[paths]\n{paths}\n\n[intake]\nsettle_seconds = {SETTLE_SECONDS}\n"
        f'rescan_seconds = {RESCAN_SECONDS}\npair_wait_seconds = 0.5\npolling = "never"\n',
        encoding="utf-8",
    )
    (root / "inbox").mkdir(parents=True, exist_ok=True)
    return config


def drop_files(inbox: Path, count: int) -> None:
    """Small prompt files, written in place (no rename) as a careless copier would."""
    for number in range(count):
        (inbox / f"flood{number:05d}.txt").write_text(f"a small fox number {number}\nseed: {number}\n")


def intake_step(settings: Settings, watcher: InboxWatcher, pairer: Pairer, intake: IntakeStage) -> None:
    """One pass of the daemon's intake: refuse or pair what settled, then take each drop."""
    takeable = []
    for item in watcher.poll():
        refusal = refusal_for(item, settings.intake.conflict_copies)
        if refusal is None:
            takeable.append(as_takeable(item))
            continue
        intake.refuse(item.path, item.relpath, *refusal)
        watcher.forget(item.path)
    pairer.offer(takeable)
    for drop in pairer.release():
        intake.take(drop)
        for part in drop.parts:
            watcher.forget(part.path)


def run_flood(root: Path, count: int, timeout: float = 600.0) -> FloodResult:
    settings = load_settings(write_config(root), environ={}).settings
    folders: Folders = prepare_folders(settings)
    preset_dirs = preset_search_dirs(folders.presets)
    styles = load_styles([folders.styles] if folders.styles else [])
    journal = Journal.open(folders.journal_db, owner="flood-bench")
    watcher = InboxWatcher(
        folders.inbox,
        settle_seconds=settings.intake.settle_seconds,
        rescan_seconds=settings.intake.rescan_seconds,
        polling=settings.intake.polling,
    )
    pairer = Pairer(settings.intake.pair_wait_seconds)
    intake = IntakeStage(settings, folders, journal, preset_dirs, styles)
    try:
        watcher.start()
        baseline = peak_rss_bytes()
        drop_files(folders.inbox, count)
        started = time.monotonic()
        deadline = started + timeout
        while intake.counts.queued_inputs + intake.counts.failed_inputs < count:
            if time.monotonic() > deadline:
                break
            watcher.wait(0.2)
            intake_step(settings, watcher, pairer, intake)
        seconds = time.monotonic() - started
        growth = peak_rss_bytes() - baseline
        with journal._lock:
            inputs = journal._conn.execute("SELECT count(*) FROM inputs WHERE state = 'claimed'").fetchone()[
                0
            ]
        return FloodResult(
            files=count,
            journaled_inputs=int(inputs),
            queued_jobs=intake.counts.queued_jobs,
            failed_inputs=intake.counts.failed_inputs,
            seconds=round(seconds, 3),
            files_per_second=round(count / seconds, 1) if seconds > 0 else 0.0,
            peak_rss_growth_bytes=growth,
            left_in_inbox=sum(1 for _ in folders.inbox.iterdir()),
            watch_mode=watcher.watch_mode,
        )
    finally:
        watcher.stop()
        journal.close()


def markdown(result: FloodResult, machine: str) -> str:
    return (
        f"# Intake flood: {result.files:,} files dropped at once\n\n"
        f"Machine: {machine}. Settle {SETTLE_SECONDS} s, rescan {RESCAN_SECONDS} s, no worker.\n\n"
        "| measure | value |\n|---|---|\n"
        f"| files journaled | {result.journaled_inputs:,} of {result.files:,} |\n"
        f"| failed inputs | {result.failed_inputs} |\n"
        f"| time (all files present → last claimed) | {result.seconds:.1f} s |\n"
        f"| intake rate | {result.files_per_second:,.0f} files/s |\n"
        f"| peak RSS growth | {result.peak_rss_growth_bytes / 2**20:.1f} MiB |\n"
        f"| watch mode | {result.watch_mode} |\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fooocusd-flood-") as tmp:
        result = run_flood(Path(tmp), args.files)
    machine = (
        f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()})"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"intake-flood-{date.today().isoformat()}"
    (args.out / f"{stem}.json").write_text(
        json.dumps({**asdict(result), "machine": machine}, indent=2) + "\n", encoding="utf-8"
    )
    (args.out / f"{stem}.md").write_text(markdown(result, machine), encoding="utf-8")
    print(markdown(result, machine))
    return 0 if result.journaled_inputs == result.files else 1


if __name__ == "__main__":
    sys.exit(main())
