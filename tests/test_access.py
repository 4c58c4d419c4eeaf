"""A permission error names the owner, the mode and the user fooocusd runs as, and what to run."""

from __future__ import annotations

import errno
import os
import pwd
from pathlib import Path

from fooocusd.access import cannot_read, unreadable_hint

ME = pwd.getpwuid(os.geteuid()).pw_name


def test_a_file_readable_by_its_owner_alone_is_explained_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "private.txt"
    path.write_text("a secret cat")
    path.chmod(0o600)

    hint = unreadable_hint(path)

    assert f"belongs to {ME}:" in hint and "mode 600" in hint and f"fooocusd runs as {ME}" in hint
    assert "`chmod a+r private.txt`" in hint, "the file is named alone: it will be in failed/"


def test_a_folder_is_named_by_its_path_and_needs_x_too(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o700)

    assert f"`chmod a+rx {folder}`" in unreadable_hint(folder)


def test_only_a_permission_error_gets_the_ownership_hint(tmp_path: Path) -> None:
    path = tmp_path / "job.txt"
    path.write_text("a cat")

    denied = cannot_read(path, PermissionError(errno.EACCES, "Permission denied"), "image")
    broken = cannot_read(path, OSError(errno.EIO, "Input/output error"))

    assert denied.message == "cannot read image job.txt: Permission denied" and "chmod a+r" in denied.hint
    assert broken.message == "cannot read job.txt: Input/output error" and broken.hint == ""
