"""Start-up check that the daemon's folders cannot feed into each other.

An outbox (or done/failed/state folder) inside the inbox would make the daemon consume its own
outputs in a loop; an inbox inside one of them would make claimed inputs reappear as new drops.
A folder the daemon reads from (models, presets, styles, wildcards) inside the inbox would have
its files taken as drops: a wildcard list run as a prompt and moved to done/, a model moved to
failed/ as an unsupported file. That is refused too, unless the intake ignores the folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from fooocusd.errors import ConfigError
from fooocusd.intake.ignore import classify_dir
from fooocusd.settings import Settings


def check_folder_layout(settings: Settings) -> None:
    """Every folder check of ``settings.paths``; raises ``ConfigError`` naming the settings at fault."""
    paths = settings.paths.resolved()
    assert_folders_disjoint(paths.inbox, paths.outbox, paths.state, paths.done, paths.failed)
    read_from = [
        *(("models", root) for root in paths.models),
        ("presets", paths.presets),
        ("styles", paths.styles),
        ("wildcards", paths.wildcards),
    ]
    assert_read_folders_outside_inbox(paths.inbox, read_from, settings.intake.ignore_patterns)


def assert_read_folders_outside_inbox(
    inbox: Path, folders: Iterable[tuple[str, Path | None]], ignore_patterns: Sequence[str] = ()
) -> None:
    """Raise ``ConfigError`` when one of ``folders`` (setting name, path) is the inbox or lies
    inside it where the intake does not ignore it (a dot-folder, ``intake.ignore_patterns``)."""
    real_inbox = _real(inbox)
    for label, folder in folders:
        if folder is None:
            continue
        real = _real(folder)
        if not real.is_relative_to(real_inbox):
            continue
        inside = real.relative_to(real_inbox).as_posix()
        if inside != "." and classify_dir(inside, ignore_patterns) is not None:
            continue  # the intake never looks in there
        raise ConfigError(
            f"the {label} folder {_show(folder, real)} lies inside the inbox {_show(inbox, real_inbox)}; "
            "the daemon would take its files as drops (and move them to done/ or failed/)",
            hint=f"move paths.{label} outside the inbox (e.g. next to it), or add its folder name to "
            "intake.ignore_patterns",
            where=f"paths.inbox, paths.{label}",
        )


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
