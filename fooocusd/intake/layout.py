"""Start-up check that the daemon's folders cannot feed into each other.

An outbox (or done/failed/state folder) inside the inbox would make the daemon consume its own
outputs in a loop; an inbox inside one of them would make claimed inputs reappear as new drops.
"""

from __future__ import annotations

from pathlib import Path

from fooocusd.errors import ConfigError


def assert_folders_disjoint(inbox: Path, outbox: Path, state: Path, done: Path, failed: Path) -> None:
    """Raise ``ConfigError`` when any of outbox/state/done/failed lies inside the inbox, or the
    inbox inside any of them. Symlinks are resolved first; the folders need not exist yet."""
    real_inbox = _real(inbox)
    others = {"outbox": outbox, "state": state, "done": done, "failed": failed}
    for label, folder in others.items():
        real_other = _real(folder)
        if real_other == real_inbox:
            raise ConfigError(
                f"the {label} folder and the inbox are the same folder: {_show(folder, real_other)}",
                hint=f"give paths.{label} its own folder outside the inbox",
                where=f"paths.inbox, paths.{label}",
            )
        if real_other.is_relative_to(real_inbox):
            raise ConfigError(
                f"the {label} folder {_show(folder, real_other)} lies inside the inbox "
                f"{_show(inbox, real_inbox)}; the daemon would pick up its own files",
                hint=f"move paths.{label} outside the inbox, e.g. next to it",
                where=f"paths.inbox, paths.{label}",
            )
        if real_inbox.is_relative_to(real_other):
            raise ConfigError(
                f"the inbox {_show(inbox, real_inbox)} lies inside the {label} folder "
                f"{_show(folder, real_other)}; files moved there would be taken as new drops",
                hint=f"use separate folders for paths.inbox and paths.{label}",
                where=f"paths.inbox, paths.{label}",
            )


def _real(path: Path) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _show(given: Path, real: Path) -> str:
    given = Path(given)
    return str(given) if given == real else f"{given} (really {real})"
