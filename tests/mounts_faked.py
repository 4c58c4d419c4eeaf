"""A disk unmounted under a running daemon, faked at the lowest level the daemon looks at.

Mounting needs privileges tests do not have, so ``os.stat`` is made to report another device
for one folder: what a mount point left bare by an unmounted share looks like.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def on_another_disk(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Callable[[], None]:
    """``os.stat`` says ``folder`` is on another disk, as a bare mount point is; returns the undo."""
    real_stat = os.stat
    moved = str(folder.resolve())

    def stat(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if not isinstance(path, (str, os.PathLike)) or os.path.abspath(os.fspath(path)) != moved:
            return result
        fields = list(result)
        fields[2] += 1  # st_dev
        return os.stat_result(fields)

    monkeypatch.setattr(os, "stat", stat)
    return lambda: monkeypatch.setattr(os, "stat", real_stat)
