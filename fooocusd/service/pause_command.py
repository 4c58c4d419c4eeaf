"""``fooocusd pause`` and ``fooocusd resume``: hold the queue, and let it go again (``pause.py``)."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

from rich.console import Console

from fooocusd.errors import ConfigError
from fooocusd.service.folders import Folders
from fooocusd.service.pause import parse_duration, pause_file, pause_queue, resume_queue
from fooocusd.service.state_lock import daemon_holding
from fooocusd.settings import LoadedSettings

_out = Console(soft_wrap=True, markup=False, highlight=False)


def add_parser(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``pause`` and ``resume`` (called from ``cli.py``)."""
    pause = sub.add_parser(
        "pause",
        parents=parents,
        help="start no new job until `fooocusd resume`; files are still taken in and queued",
    )
    pause.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="resume by itself after this long: 90s, 30m, 2h, 1h30m or 1d",
    )
    pause.set_defaults(handler=pause_jobs)
    resume = sub.add_parser("resume", parents=parents, help="start jobs again after `fooocusd pause`")
    resume.set_defaults(handler=resume_jobs)


def pause_jobs(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    seconds = parse_duration(args.duration) if args.duration else None
    state = Folders.from_paths(loaded.settings.paths.resolved()).state
    try:
        pause = pause_queue(state, seconds)
    except OSError as exc:
        raise _cannot_change(state, exc) from exc
    if daemon_holding(state) is not None:
        frees = "; then the model leaves GPU memory" if loaded.settings.engine.unload_when_paused else ""
        after = (
            f"the image being made finishes, then its job goes back to the queue{frees}; "
            "files dropped meanwhile are queued"
        )
    else:
        after = "no daemon runs now; when one starts, it takes files in but starts no job"
    _out.print(f"{pause.describe()}: {after}. `fooocusd resume` ends it.")
    return 0


def resume_jobs(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    state = Folders.from_paths(loaded.settings.paths.resolved()).state
    try:
        ended = resume_queue(state)
    except OSError as exc:
        raise _cannot_change(state, exc) from exc
    _out.print(
        f"resumed: the queue was {ended.describe()}" if ended is not None else "the queue was not paused"
    )
    return 0


def _cannot_change(state: Path, exc: OSError) -> ConfigError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free some space on the disk that holds {state} (`df -h {state}` shows it)"
    else:
        hint = (
            "run the command as the user the daemon runs as (for the system service: "
            "`sudo -u fooocusd fooocusd pause`), with the same --config or --state-dir"
        )
    reason = exc.strerror or exc
    return ConfigError(f"cannot change {pause_file(state)}: {reason}", hint=hint, where=str(state))
