"""The ``fooocusd`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loguru import logger

from fooocusd import __version__
from fooocusd.errors import FooocusdError
from fooocusd.service.logs import configure_logging
from fooocusd.settings import FLAG_SETTINGS, LoadedSettings, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        loaded = _load(args)
        configure_logging(loaded.settings.logging.level, loaded.settings.logging.json_logs)
        return int(args.handler(args, loaded) or 0)
    except FooocusdError as exc:
        configure_logging("INFO")
        logger.error(exc.explain())
        return 2
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace) -> LoadedSettings:
    overrides: dict[str, Any] = {}
    for attr, key in FLAG_SETTINGS.items():
        value = getattr(args, attr, None)
        if value is not None and value is not False:
            overrides[key] = value
    return load_settings(getattr(args, "config", None), overrides)


class _Parser(argparse.ArgumentParser):
    """No abbreviated flags: ``submit --model x`` would otherwise be read as ``--models-dir x``.

    Subcommands' parsers are of the same class (``add_subparsers`` uses the parent's type).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    # Settings flags default to SUPPRESS so that each may stand before the command, between
    # `config` and `show`, or after: with a real default, the innermost parser's unset flag
    # would overwrite the value an outer one had read.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--config", type=Path, help="configuration file (default: see config show)")
    common.add_argument("--log-level", choices=["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"])
    common.add_argument("--log-json", action="store_true", help="log one JSON object per line")

    folders = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    for flag in ("inbox", "outbox", "done-dir", "failed-dir", "state-dir", "models-dir"):
        folders.add_argument(f"--{flag}", type=Path)

    daemon = argparse.ArgumentParser(add_help=False, parents=[folders], argument_default=argparse.SUPPRESS)
    daemon.add_argument("--model", help="checkpoint file or folder, or tiny-random")
    daemon.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps")
    daemon.add_argument("--settle-seconds", type=float)
    daemon.add_argument("--polling", choices=["auto", "always", "never"])

    parser = _Parser(
        prog="fooocusd",
        description="Watch-folder daemon for local SDXL images.",
        parents=[common, daemon],
        epilog="Settings flags may come before or after the command: "
        "fooocusd --config FILE run, or fooocusd run --config FILE.",
    )
    parser.add_argument("--version", action="version", version=f"fooocusd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from fooocusd.service import commands

    run = sub.add_parser("run", parents=[common, daemon], help="run the daemon in the foreground")
    run.set_defaults(handler=commands.run)
    once = sub.add_parser("once", parents=[common, daemon], help="drain the inbox, print a summary, exit")
    once.add_argument("--no-progress", action="store_true", help="no progress bar")
    once.set_defaults(handler=commands.once)
    status = sub.add_parser("status", parents=[common, daemon], help="queue, running job, recent failures")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=commands.status)
    submit = sub.add_parser(
        "submit",
        parents=[common, daemon],
        help="drop a file into the inbox atomically, with the pictures a job file needs",
    )
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", type=Path, help="a .txt, .toml, .json or image file")
    what.add_argument("--prompt", help="make a .txt job from this prompt")
    submit.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="with --prompt: a job option, e.g. --set seed=42 --set images=4 (repeatable)",
    )
    submit.add_argument("--subdir", default="", help="inbox subfolder (routes to the preset of that name)")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait until the running daemon has made the images, and print their paths (exit 0: all done; "
        "1: a job failed, or the file was refused; 3: the daemon stopped; 124: --timeout ran out)",
    )
    submit.add_argument(
        "--timeout", type=float, default=None, metavar="SECONDS", help="with --wait: give up after"
    )
    submit.add_argument(
        "--dry-run",
        action="store_true",
        help="check it and show what each job would run with (preset, model, size, steps, sampler, "
        "LoRAs), writing nothing",
    )
    submit.add_argument(
        "--json",
        action="store_true",
        help="with --wait: print one JSON object (ending, exit_code, images, problems, report) instead; "
        "with --dry-run: the jobs' settings as JSON",
    )
    submit.set_defaults(handler=commands.submit)
    retry = sub.add_parser(
        "retry",
        parents=[common, daemon],
        help="run a failed or cancelled job again, or put a refused file back in the inbox",
    )
    retry_what = retry.add_mutually_exclusive_group(required=True)
    retry_what.add_argument(
        "job", nargs="*", default=[], help="job id, the start of the input's name, or a refused file's name"
    )
    retry_what.add_argument(
        "--all-failed",
        action="store_true",
        help="every failed job, e.g. after downloading the model they lacked (refused files stay in failed/)",
    )
    retry.set_defaults(handler=commands.retry)
    cancel = sub.add_parser("cancel", parents=[common, daemon], help="cancel a queued or running job")
    cancel.add_argument("job", help="job id, or the start of the input's name")
    cancel.set_defaults(handler=commands.cancel)
    from fooocusd.service import pause_command

    pause_command.add_parser(sub, parents=[common, daemon])
    config = sub.add_parser("config", parents=[common, daemon], help="configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser(
        "show", parents=[common, daemon], help="effective settings and their sources"
    )
    show.set_defaults(handler=commands.config_show)
    check = config_sub.add_parser(
        "check",
        parents=[common, daemon],
        help="check the configuration as a start or reload would, without starting anything",
    )
    check.set_defaults(handler=commands.config_check)
    from fooocusd.service import styles_command

    styles = sub.add_parser("styles", parents=[common, daemon], help="list the styles a job may name")
    styles.add_argument("--search", metavar="TEXT", help="only styles matching every word")
    styles.add_argument(
        "--styles-dir", dest="styles_dir", type=Path, action="append", help="extra style folder (repeatable)"
    )
    styles.set_defaults(handler=styles_command.styles)
    from fooocusd.service import presets_command

    presets = sub.add_parser(
        "presets", parents=[common, daemon], help="list the presets a job may name, and their model files"
    )
    presets.add_argument("--json", action="store_true", help="machine-readable output")
    presets.set_defaults(handler=presets_command.presets)
    from fooocusd.service import wildcards_command

    wildcards = sub.add_parser(
        "wildcards", parents=[common, daemon], help="list the __name__ wildcards a prompt may use"
    )
    wildcards.add_argument("--json", action="store_true", help="machine-readable output, every line included")
    wildcards.set_defaults(handler=wildcards_command.wildcards)
    from fooocusd.service import models_command

    models_command.add_parser(sub, parents=[common, daemon])
    from fooocusd.service import inspect_command

    inspect_command.add_parser(sub, parents=[common, daemon])
    doctor = sub.add_parser("doctor", parents=[common, daemon], help="check torch, devices, models, folders")
    doctor.set_defaults(handler=commands.doctor)
    from fooocusd.service import install_service

    install_service.add_parser(sub, parents=[common, daemon])
    return parser


if __name__ == "__main__":
    sys.exit(main())
