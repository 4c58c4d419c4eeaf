"""A fork server for kill -9 cycles: import fooocusd/diffusers and load the model once, then fork
one real daemon per cycle and SIGKILL it at a random moment (or let a random crash point kill it).

Run as ``python -m tests.reliability_forkserver CONFIG SEED CYCLES REPORT``. Each child runs the
real ``Daemon`` (watcher, journal, worker, outbox) on the shared folders; only the model load is
skipped by handing the child the engine the server loaded before forking. The server also drops
new job files while children run, so intake is killed mid-claim as often as the worker mid-image.
It writes a JSON report: what was dropped, and how each cycle ended.

Torch on CPU is forked safely only while it has no thread pool yet: the server sets one thread
before it imports anything that computes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from fooocusd import crashpoints  # noqa: E402
from fooocusd.engine.factory import create_engine  # noqa: E402
from fooocusd.service import daemon as daemon_module  # noqa: E402
from fooocusd.service.daemon import Daemon  # noqa: E402
from fooocusd.service.folders import prepare_folders  # noqa: E402
from fooocusd.settings import load_settings  # noqa: E402

# Every crash point in the code; the child dies the first time it reaches the chosen one.
CRASH_POINTS = [
    "after_begin_claim",
    "after_claim_move",
    "after_complete_claim",
    "before_generate",
    "after_image_published",
    "after_output_written",
    "after_output_recorded",
    "after_job_done",
    "after_begin_finish",
]
# How long a child may live at most: long enough for a few jobs, short enough for 50 cycles.
MAX_LIFETIME_SECONDS = 1.4
CRASH_POINT_SHARE = 0.4


def job_text(number: int, rng: random.Random) -> tuple[str, str]:
    """A small job file: mostly one image, sometimes two images or two jobs in one file."""
    choice = rng.random()
    if choice < 0.15:
        body = (
            f'[[job]]\nprompt = "a harbour, number {number}"\nseed = {1000 + number}\nsteps = 2\n'
            f'[[job]]\nprompt = "a lighthouse, number {number}"\nseed = {2000 + number}\nsteps = 2\n'
        )
        return f"stream{number:03d}.toml", body
    images = 2 if choice < 0.4 else 1
    return f"stream{number:03d}.txt", f"a fox number {number}\nseed: {number}\nimages: {images}\nsteps: 2\n"


def drop(inbox: Path, name: str, body: str) -> None:
    temp = inbox / f".{name}.partial"
    temp.write_text(body, encoding="utf-8")
    os.replace(temp, inbox / name)


def child(settings: Any, engine: Any, point: str | None) -> None:
    """In the forked child: run the real daemon until killed. Never returns."""
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        crashpoints._POINT = point or ""
        crashpoints._NTH = ""
        crashpoints._hits = 0
        daemon_module.create_engine = lambda *_args, **_kwargs: engine  # already loaded before the fork
        Daemon(settings).run()
    except BaseException:
        code = 3
    finally:
        os._exit(code)


def run(config: Path, seed: int, cycles: int) -> dict[str, Any]:
    settings = load_settings(config, environ={}).settings
    folders = prepare_folders(settings)
    engine = create_engine(settings.engine, folders.models, folders.cache)
    engine.load()
    rng = random.Random(seed)
    dropped: list[str] = []
    outcomes: list[dict[str, Any]] = []
    number = 0
    for _ in range(3):
        name, body = job_text(number, rng)
        drop(folders.inbox, name, body)
        dropped.append(name)
        number += 1
    for cycle in range(cycles):
        point = rng.choice(CRASH_POINTS) if rng.random() < CRASH_POINT_SHARE else None
        lifetime = rng.uniform(0.05, MAX_LIFETIME_SECONDS)
        drop_at = rng.uniform(0.0, lifetime) if rng.random() < 0.6 else None
        pid = os.fork()
        if pid == 0:
            child(settings, engine, point)
        started = time.monotonic()
        if drop_at is not None:
            time.sleep(drop_at)
            name, body = job_text(number, rng)
            drop(folders.inbox, name, body)
            dropped.append(name)
            number += 1
        remaining = lifetime - (time.monotonic() - started)
        ended_by_itself = _wait(pid, max(0.0, remaining))
        if ended_by_itself is None:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        else:
            status = ended_by_itself
        outcomes.append(
            {
                "cycle": cycle,
                "crash_point": point,
                "lifetime": round(lifetime, 3),
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            }
        )
    return {"seed": seed, "dropped": dropped, "cycles": outcomes}


def _wait(pid: int, seconds: float) -> int | None:
    """The child's wait status if it ended within ``seconds`` (a crash point fired), else None."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    config, seed, cycles, report = Path(argv[0]), int(argv[1]), int(argv[2]), Path(argv[3])
    result = run(config, seed, cycles)
    report.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
