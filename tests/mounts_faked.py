"""A disk mounted and unmounted under a running daemon, faked at the lowest level it looks at.

Mounting needs privileges tests do not have, so ``os.lstat`` and ``os.stat`` are made to report
another device for one folder and everything under it while it is "mounted": ``os.path.ismount``
then says it is a mount point, and once "unmounted" it is the bare folder a share leaves behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


class FakeMount:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
        self.folder = str(folder.resolve())
        self.mounted = True
        for name in ("stat", "lstat"):
            monkeypatch.setattr(os, name, self._other_device(getattr(os, name)))

    def unmount(self) -> None:
        self.mounted = False

    def mount(self) -> None:
        self.mounted = True

    def _other_device(self, real: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
        def patched(path: str | os.PathLike[str] | int, *args: object, **kwargs: object) -> os.stat_result:
            result = real(path, *args, **kwargs)
            if not self.mounted or not isinstance(path, (str, os.PathLike)):
                return result
            where = os.path.abspath(os.fspath(path))
            if where != self.folder and not where.startswith(self.folder + os.sep):
                return result
            fields = list(result)
            fields[2] += 1  # st_dev
            return os.stat_result(fields)

        return patched
