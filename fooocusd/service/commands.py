"""What each CLI command does. Kept apart from argument parsing."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from fooocusd.errors import ConfigError, FooocusdError, InvalidInput
from fooocusd.intake.waiting import inbox_waiting
from fooocusd.jobs.presets import preset_search_dirs
from fooocusd.journal.journal import Journal, JournalError, status_report, unfinished_jobs
from fooocusd.journal.rows import JobRow, job_label
from fooocusd.service.folders import Folders, prepare_folders
from fooocusd.service.free_space import low_disks
from fooocusd.service.model_presence import model_away
from fooocusd.service.pause import current_pause
from fooocusd.service.queue_estimate import QueueEstimate, estimate_queue
from fooocusd.service.state_lock import daemon_holding, state_folder_lock
from fooocusd.settings import LoadedSettings, flatten

if TYPE_CHECKING:
    from fooocusd.service.daemon import Summary

# Lines are not wrapped, so that scripts and copy-paste get whole paths; tables still fit the width.
# No markup: file names and error texts may hold brackets ("[draft] cat.txt", "[engine] model").
_out = Console(soft_wrap=True, markup=False)
_err = Console(stderr=True, soft_wrap=True, markup=False)


def run(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    with _state_folder_taken(loaded):
        from fooocusd.service.daemon import Daemon  # torch and diffusers load only where needed
        from fooocusd.service.reload import SettingsSource

        # SIGHUP (systemctl reload) reads the same file, environment and flags again.
        daemon = Daemon(loaded.settings, settings_source=SettingsSource.from_loaded(loaded))
        previous = daemon.install_signal_handlers()
        try:
            daemon.run(state_locked=True)
        finally:
            _restore_signal_handlers(previous)
    return 0


def once(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    with _state_folder_taken(loaded):
        summary = _drain(args, loaded)
    _print_summary(summary)
    return 0 if summary.ok else 1


@contextmanager
def _state_folder_taken(loaded: LoadedSettings) -> Iterator[None]:
    """Hold the state folder from the start, before torch loads (seconds) and the model (more):
    a second daemon is refused at once, and ``status`` says this one is starting meanwhile."""
    folders = prepare_folders(loaded.settings)
    with state_folder_lock(folders.state):
        yield


def _drain(args: argparse.Namespace, loaded: LoadedSettings) -> Summary:
    from fooocusd.service.daemon import Daemon

    show_bar = sys.stderr.isatty() and not args.no_progress
    if not show_bar:
        daemon = Daemon(loaded.settings)
        previous = daemon.install_signal_handlers()
        try:
            return daemon.run(drain=True, state_locked=True)
        finally:
            _restore_signal_handlers(previous)
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def sink(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        daemon = Daemon(loaded.settings, progress_sink=sink)
        previous = daemon.install_signal_handlers()
        try:
            return daemon.run(drain=True, state_locked=True)
        finally:
            _restore_signal_handlers(previous)


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


NEXT_JOBS_SHOWN = 5


def _next_jobs(journal: Journal) -> list[dict[str, Any]]:
    """The queued jobs that run next, in order (a job of a file with several: ``name #2``)."""
    shown = []
    for job in journal.next_runnable_jobs(NEXT_JOBS_SHOWN):
        source = journal.get_input(job.input_id)
        name = job_label(job, source) if source is not None else "?"
        shown.append({"id": job.id, "input": name, "priority": job.priority})
    return shown


def _print_summary(summary: Summary) -> None:
    _out.print(
        f"fooocusd once: {summary.jobs_done} job(s) done, {summary.images_written} image(s) written, "
        f"{summary.jobs_failed} job(s) failed, {summary.inputs_failed} input(s) in failed/"
        + (f", {summary.duplicates_skipped} duplicate(s) skipped" if summary.duplicates_skipped else "")
        + (
            f", {len(summary.empty_files_left)} empty file(s) left in the inbox"
            if summary.empty_files_left
            else ""
        )
        + (
            f"; paused: {summary.left_paused} job(s) left queued until `fooocusd resume`"
            if summary.left_paused
            else ""
        )
        + (
            f"; {summary.inputs_unmoved} input(s) could not be moved out of processing/ (the log says why; "
            "the next start moves them)"
            if summary.inputs_unmoved
            else ""
        ),
        soft_wrap=True,
        highlight=False,
    )


def _folders(loaded: LoadedSettings) -> Folders:
    return Folders.from_paths(loaded.settings.paths.resolved())


def _open_journal(loaded: LoadedSettings) -> Journal:
    folders = _folders(loaded)
    if not folders.journal_db.exists():
        raise ConfigError(
            f"no journal at {folders.journal_db}",
            hint="the daemon has not run with this state folder yet (check --state-dir / paths.state)",
        )
    return Journal.open(folders.journal_db, owner=f"cli:{os.getpid()}")


def status(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from fooocusd.service.journal_reader import open_when_ready

    folders = _folders(loaded)
    # Before the daemon's first start there are no jobs yet, but the inbox may already hold files;
    # a daemon that has just started may still be creating its journal.
    holder = daemon_holding(folders.state)
    journal = None
    estimate: QueueEstimate | None = None
    if folders.journal_db.is_file() or holder is not None:
        journal = open_when_ready(folders.journal_db, folders.state)
    if journal is not None:
        try:
            report = journal.status()
            report["recent_refusals"] = [
                {"ts": event.ts, "detail": event.detail} for event in journal.recent_events("refused")
            ]
            if unfinished_jobs(report["counts"]):
                estimate = estimate_queue(journal, loaded.settings, preset_search_dirs(folders.presets))
            report["next"] = _next_jobs(journal)
            report["inputs_to_move"] = len(journal.inputs_finishing()) + len(journal.inputs_ready_to_finish())
        finally:
            journal.close()
    else:
        report = status_report(time.time())
        report["recent_refusals"] = []
        report["next"] = []
        report["inputs_to_move"] = 0
    report["estimate"] = estimate.record() if estimate is not None else None
    journal_exists = folders.journal_db.is_file()
    report["journal"] = str(folders.journal_db) if journal_exists else None
    starting = holder is not None and journal is None
    report["daemon"] = {
        "running": holder is not None,
        "pid": int(holder) if holder and holder.isdigit() else None,
        "starting": starting,
    }
    pause = current_pause(folders.state)
    report["paused"] = pause.record() if pause is not None else None
    away = model_away(folders.state) if holder is not None and not starting else None
    report["model_away"] = away.record() if away is not None else None
    waiting = inbox_waiting(folders.inbox, loaded.settings.intake.ignore_patterns)
    report["inbox_waiting"] = waiting.record()
    low_on_room = low_disks({"outbox": folders.outbox, "state folder": folders.state})
    report["low_disk"] = [space.record() for space in low_on_room]
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    if not journal_exists and not starting:
        _out.print(
            f"no journal yet at {folders.journal_db}: the daemon has not run with this state folder "
            "(if it has, check --state-dir or paths.state)"
        )
    counts = report["counts"]
    if holder is None:
        waiting_jobs = unfinished_jobs(counts)
        start = (
            f"; {waiting_jobs} job(s) wait for it (`fooocusd run`, or `systemctl start fooocusd`)"
            if waiting_jobs
            else ""
        )
        _out.print(f"daemon: not running on the state folder {folders.state}{start}")
    elif starting:
        _out.print(
            f"daemon: starting (pid {holder}): it is loading its model, or creating or upgrading its "
            f"journal {folders.journal_db}; job counts follow once it is ready"
        )
    else:
        _out.print(f"daemon: running (pid {holder})")
    if pause is not None:
        _out.print(f"queue: {pause.describe()}; no job starts until `fooocusd resume`")
    if away is not None:
        _out.print(f"model: {away.describe()}")
    _out.print(
        "jobs: "
        + ", ".join(
            f"{state} {counts.get(state, 0)}"
            for state in ("queued", "running", "done", "failed", "cancelled")
        )
    )
    if estimate is not None:
        _out.print(f"queue: {estimate.describe()}")
    if report["next"]:
        names = ", ".join(job["input"] for job in report["next"])
        more = counts.get("queued", 0) - len(report["next"])
        _out.print(f"next: {names}" + (f" (+{more} more)" if more > 0 else ""))
    if report["inputs_to_move"]:
        _out.print(
            f"processing: {report['inputs_to_move']} input(s) whose jobs have ended wait to be moved to "
            "done/ or failed/; if this lasts, the daemon's log says why "
            "(a full disk, a folder it may not write)"
        )
    for space in low_on_room:
        _out.print(
            f"disk: only {space.describe()}; when it is full the daemon waits for room "
            "(nothing fails), so free some space"
        )
    if waiting.files:
        _out.print(f"inbox: {waiting.files} file(s) not picked up yet")
    if waiting.empty_count:
        unnamed = waiting.empty_count - len(waiting.empty)
        more = f" and {unnamed} more" if unnamed else ""
        _out.print(
            f"  {waiting.empty_count} of them empty (a sync placeholder, or a file created before its "
            f"content): each waits until it has content: {', '.join(waiting.empty)}{more}"
        )
    if waiting.in_editor:
        _out.print(
            f"  open in an editor, each taken once the editor closes it: {'; '.join(waiting.in_editor)}"
        )
    for job in report.get("running", []):
        _out.print(_progress_line(job, daemon_running=holder is not None))
    failures = report.get("recent_failures", [])
    if failures:
        table = Table("job", "input", "error", title="recent failures")
        for failure in failures:
            table.add_row(
                str(failure.get("id", "")),
                failure.get("relpath", ""),
                ("(dropped again since) " if failure.get("dropped_again") else "")
                + ((failure.get("error") or "").splitlines()[0] if failure.get("error") else ""),
            )
        _out.print(table, soft_wrap=False)
        _out.print("`fooocusd retry ID` runs one again; `fooocusd retry --all-failed` runs every failed job")
    in_failed = report["refused_files"]["in_failed"]
    if in_failed:
        _out.print(
            f"refused at intake: {in_failed} file(s) still in failed/ "
            "(fix one there, then `fooocusd retry NAME` puts it back in the inbox)"
        )
    refusals = report["recent_refusals"]
    if refusals:
        table = Table("when", "file and reason", title="recently refused files (see failed/)")
        for refusal in refusals:
            table.add_row(time.strftime("%Y-%m-%d %H:%M", time.localtime(refusal["ts"])), refusal["detail"])
        _out.print(table, soft_wrap=False)
    return 0


def submit(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from fooocusd.service.submission import refuse_what_the_daemon_would_not_take, submit_file

    folders = _folders(loaded)
    inbox = folders.inbox
    target_dir = inbox / args.subdir if args.subdir else inbox
    if args.subdir and (".." in Path(args.subdir).parts or Path(args.subdir).is_absolute()):
        raise InvalidInput("--subdir must be a folder name inside the inbox", hint="e.g. --subdir portrait")
    wait, dry_run = bool(getattr(args, "wait", False)), bool(getattr(args, "dry_run", False))
    as_json = bool(getattr(args, "json", False))
    if wait and dry_run:
        raise InvalidInput("--dry-run writes nothing, so there is nothing to --wait for", hint="drop one")
    if wait and daemon_holding(folders.state) is None:
        raise InvalidInput(
            f"no daemon is running on the state folder {folders.state}, so --wait would wait forever",
            hint="start it (`fooocusd run`, or `systemctl start fooocusd`) and submit again, or submit "
            "without --wait (the file then waits in the inbox for the daemon)",
        )
    if as_json and not (wait or dry_run):
        raise InvalidInput("--json goes with --wait or --dry-run", hint="add one, or leave --json out")
    said = _err if wait else _out  # with --wait, stdout is the images' paths alone
    since = time.time()
    if args.prompt is None and getattr(args, "set", None):
        raise InvalidInput("--set goes with --prompt", hint="for a job file, write the options into the file")
    with _prompt_job_file(args) if args.prompt is not None else nullcontext(args.path) as source:
        refuse_what_the_daemon_would_not_take(_relpath(args.subdir, source.name), loaded.settings)
        *pictures, job_file = submit_file(
            source,
            target_dir,
            inbox,
            loaded.settings,
            warn=lambda text: _err.print(f"warning: {text}"),
            dry_run=dry_run,
        )
        relpath = job_file.relative_to(inbox).as_posix()
        if dry_run:
            return _preview(source, relpath, loaded, as_json=as_json)
    beside = ", ".join(str(picture.relative_to(target_dir)) for picture in pictures)
    with_pictures = f" (with {beside})" if pictures else ""
    said.print(f"submitted {job_file}{with_pictures}")
    if not wait:
        return 0
    return _wait_for(relpath, since, folders, getattr(args, "timeout", None), as_json=as_json)


@contextmanager
def _prompt_job_file(args: argparse.Namespace) -> Iterator[Path]:
    """``--prompt TEXT`` (with ``--set KEY=VALUE`` options) as a ``.txt`` job in a temporary
    folder, to be checked and submitted as a job file would be."""
    from fooocusd.jobs.txt_format import prompt_job_text

    options = list(getattr(args, "set", None) or [])
    text = prompt_job_text(args.prompt, options)
    first_line = next(iter(args.prompt.strip().splitlines()), "")
    slug = re.sub(r"[^A-Za-z0-9]+", "-", first_line).strip("-")[:40].lower() or "prompt"
    name = f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    with tempfile.TemporaryDirectory(prefix="fooocusd-submit-") as folder:
        source = Path(folder) / name
        source.write_text(text, encoding="utf-8")
        try:
            yield source
        except InvalidInput as exc:  # "line 3" of a file the user never saw: say which argument
            first_option = len(text.splitlines()) - len(options) + 1  # a pasted recipe has several lines
            lines = {f"line {number}": "--prompt" for number in range(1, first_option)}
            lines |= {f"line {n}": f"--set {option}" for n, option in enumerate(options, start=first_option)}
            exc.where = lines.get(exc.where, exc.where)
            raise


def _preview(source: Path, relpath: str, loaded: LoadedSettings, *, as_json: bool) -> int:
    """``submit --dry-run``: what the file's jobs would run with; nothing was written."""
    from fooocusd.intake.ignore import JOB_EXTENSIONS
    from fooocusd.intake.pairing import files_beside, image_names_for, mask_names_for
    from fooocusd.jobs.loader import parse_job_file
    from fooocusd.jobs.spec import image_attached_after_parsing
    from fooocusd.jobs.txt_format import mistyped_options_unsaid
    from fooocusd.service.job_preview import job_previews, preview_lines

    previews: list[dict[str, Any]] = []
    if source.suffix.lower() in JOB_EXTENSIONS:
        with image_attached_after_parsing(), mistyped_options_unsaid():  # submit_file said them
            specs = parse_job_file(source, max_job_file_bytes=loaded.settings.intake.max_job_file_bytes)
        beside = files_beside(source, image_names_for(source.stem))
        paired = None
        if beside:
            paired = (beside[0].name, bool(files_beside(source, mask_names_for(beside[0].stem))))
        previews = job_previews(specs, relpath, loaded.settings, paired)
    if as_json:
        print(json.dumps({"would_submit": relpath, "jobs": previews}, indent=2))
        return 0
    _out.print(f"would submit {relpath} (--dry-run: nothing was written)")
    if not previews:  # an image alone
        from fooocusd.jobs.recorded_prompt import recorded_prompt

        generation = loaded.settings.generation
        recorded = recorded_prompt(source) if generation.use_recorded_prompt else {}
        prompt = f"the prompt it records: {recorded['prompt']!r}" if recorded else "no prompt"
        _out.print(f"an image alone: {generation.image_action} (generation.image_action), with {prompt}")
    for line in preview_lines(previews):
        _out.print(line)
    return 0


def _wait_for(relpath: str, since: float, folders: Folders, timeout: float | None, *, as_json: bool) -> int:
    from fooocusd.service.submit_wait import EXIT_CODES, follow

    _err.print(f"waiting for the daemon to render {relpath}…")
    try:
        if _err.is_terminal:  # a line that follows it; scripts reading stderr get no animation
            with _err.status("waiting for the daemon to take it in") as line:
                followed = follow(relpath, since, folders, timeout=timeout, on_progress=line.update)
        else:
            followed = follow(relpath, since, folders, timeout=timeout)
    except KeyboardInterrupt:
        _err.print(f"stopped waiting; the daemon still has {relpath} (`fooocusd status` follows it)")
        return 130
    code = EXIT_CODES[followed.ending]
    if as_json:
        report = str(followed.report) if followed.report is not None else None
        outcome = {
            "input": relpath,
            "ending": followed.ending,
            "exit_code": code,
            "images": [str(image) for image in followed.images],
            "sidecars": [str(image.with_suffix(".json")) for image in followed.images],
            "problems": followed.problems,
            "report": report,
        }
        print(json.dumps(outcome))
        return code
    for image in followed.images:
        _out.print(str(image))
    for problem in followed.problems:
        _err.print(problem)
    if followed.report is not None:
        _err.print(f"the report: {followed.report}")
    return code


def _progress_line(job: dict[str, Any], *, daemon_running: bool) -> str:
    step, total = job.get("progress_step") or 0, job.get("progress_total") or 0
    name = f"job {job['id']} {job['relpath']}"
    if not daemon_running:  # its daemon stopped or crashed mid-image: the next start runs it again
        return f"interrupted: {name} at step {step}/{total}; it runs again at the next start"
    if not total:
        stage = "starting"
    elif step >= total:  # denoised; the next job may already be denoising beside it
        stage = "decoding and saving"
    else:
        stage = f"{100 * step / total:.0f}%"
    return f"running: {name} — step {step}/{total} ({stage})"


def _relpath(subdir: str, name: str) -> str:
    return f"{subdir.strip('/')}/{name}".lstrip("/")


def retry(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from fooocusd.service.requeue import retry, retry_all_failed

    journal = _open_journal(loaded)
    try:
        folders = _folders(loaded)
        if args.all_failed:
            done, problems = retry_all_failed(journal, folders.inbox)
            if not done and not problems:
                done = ["no failed jobs to retry"]
        elif len(args.job) == 1:  # one name: its error is the command's error
            done, problems = [retry(journal, args.job[0], folders.inbox, folders.failed)], []
        else:
            done, problems = [], []
            for ref in args.job:
                try:
                    done.append(retry(journal, ref, folders.inbox, folders.failed))
                except FooocusdError as exc:
                    problems.append(f"{ref}: {exc.explain()}")
    finally:
        journal.close()
    for message in done:
        _out.print(message)
    for problem in problems:
        _err.print(f"not retried: {problem}", highlight=False)
    return 1 if problems else 0


def cancel(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    journal = _open_journal(loaded)
    try:
        of_file = journal.jobs_of_file(args.job)
        if len(of_file) > 1:
            return _cancel_all_of_file(journal, args.job, of_file)
        try:
            job = journal.find_job(args.job)
        except JournalError as exc:
            raise InvalidInput(
                str(exc), hint="give the job id, or a file's whole name to cancel all its jobs"
            ) from exc
        if job is None:
            raise InvalidInput(f"no job matches '{args.job}'", hint="see `fooocusd status` for job ids")
        if not journal.cancel_job(job.id):
            raise InvalidInput(f"job {job.id} is {job.state}; only queued or running jobs can be cancelled")
    finally:
        journal.close()
    _out.print(f"cancelled job {job.id}")
    return 0


def _cancel_all_of_file(journal: Journal, name: str, jobs: list[JobRow]) -> int:
    """``fooocusd cancel many.toml``: every job of that file that has not ended."""
    cancelled = journal.cancel_jobs([job.id for job in jobs])
    if not cancelled:
        raise InvalidInput(
            f"none of the {len(jobs)} jobs of {name} is queued or running; nothing to cancel",
            hint="`fooocusd status` lists what waits",
        )
    ended = len(jobs) - len(cancelled)
    already = f"; {ended} had ended already" if ended else ""
    _out.print(f"cancelled {len(cancelled)} job(s) of {name}{already}")
    return 0


def config_show(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    table = Table("setting", "value", "from", title=f"config file: {loaded.config_file or '(none found)'}")
    for key, value in flatten(loaded.settings).items():
        table.add_row(key, json.dumps(value), loaded.sources.get(key, "default"))
    Console(width=max(_out.width, 120), markup=False).print(table)
    return 0


def config_check(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    """What ``systemctl reload`` (or a start) would say about the file, before it is asked to."""
    from fooocusd.intake.layout import check_folder_layout
    from fooocusd.jobs.presets import preset_search_dirs
    from fooocusd.service.settings_checks import check_configuration

    paths = loaded.settings.paths.resolved()
    check_folder_layout(loaded.settings)
    preset_dirs = preset_search_dirs(paths.presets)
    checked = check_configuration(loaded.settings, paths.models, paths.styles, preset_dirs)
    if checked.warning:
        _err.print(f"warning: {checked.warning}", highlight=False)
    source = loaded.config_file or "the defaults (no config file found)"
    model = checked.model.path or checked.model.name
    _out.print(
        f"{source}: valid; model {model}, {checked.presets} presets, {len(checked.styles)} styles",
        highlight=False,
    )
    return 0


def doctor(args: argparse.Namespace, loaded: LoadedSettings) -> int:
    from fooocusd.service.doctor import run_checks

    checks = run_checks(loaded.settings)
    table = Table("check", "result", "detail")
    marks = {"ok": Text("ok", "green"), "warn": Text("warn", "yellow"), "fail": Text("FAIL", "red")}
    worst = 0
    for check in checks:
        table.add_row(check.name, marks[check.level], Text(check.detail, overflow="fold"))
        worst = max(worst, {"ok": 0, "warn": 0, "fail": 1}[check.level])
    _out.print(table, soft_wrap=False)
    return worst
