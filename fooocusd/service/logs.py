"""Logging with loguru: readable on a terminal, no doubled timestamps under journald, JSON on request."""

from __future__ import annotations

import logging
import os
import sys

from loguru import logger

_TERMINAL = "<green>{time:YYYY-MM-DD HH:mm:ss}</green> <level>{level: <7}</level> {message}"
# journald stamps every line itself; systemd sets JOURNAL_STREAM for services it started.
_JOURNALD = "{level: <7} {message}"


def configure_logging(level: str = "INFO", json_logs: bool = False) -> None:
    logger.remove()
    if json_logs:
        logger.add(sys.stderr, level=level, serialize=True)
    elif os.environ.get("JOURNAL_STREAM"):
        logger.add(sys.stderr, level=level, format=_JOURNALD, colorize=False)
    else:
        # Write through the *current* sys.stderr so rich's live progress bar can take the lines.
        logger.add(_to_current_stderr, level=level, format=_TERMINAL, colorize=sys.stderr.isatty())
    _quiet_libraries()


def _to_current_stderr(message: str) -> None:
    sys.stderr.write(message)


def _quiet_libraries() -> None:
    for name in ("diffusers", "transformers", "watchdog", "PIL", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("watchdog.observers.inotify").addFilter(_not_inotify_stop_race)


def _not_inotify_stop_race(record: logging.LogRecord) -> bool:
    # watchdog 7 logs this "error" when an event arrives while its observer stops (ours, at
    # shutdown): nothing is lost, since the daemon rescans the inbox when it starts.
    return "called when the thread is inactive" not in record.getMessage()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
