"""``fooocusd submit``: put a job file into the inbox with the pictures it needs, or nothing at all.

A job file may name pictures (``image``, ``mask``, image prompts), relative to itself, and the
intake pairs ``fox.txt`` with ``fox.png`` and ``fox.mask.png`` beside it. Copied alone, such a job
would be refused for want of its pictures, so they are copied too, under the same relative paths,
before the job file (the order the intake expects). Everything is checked before anything is
written: a named picture that is missing, a name in the inbox already taken by other content, a
job file the daemon would refuse anyway, or a preset, style, sampler or scheduler name that cannot
work is said at once, and the inbox is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fooocusd.engine.sampler_table import check_sampler_names
from fooocusd.engine.styles import load_styles
from fooocusd.errors import InvalidInput
from fooocusd.intake.claim import unique_destination
from fooocusd.intake.ignore import JOB_EXTENSIONS, Kind, classify_name
from fooocusd.intake.pairing import files_beside, image_names_for, mask_names_for
from fooocusd.intake.readable_names import readable
from fooocusd.jobs.drop_files import paths_named_by, resolve_written_path
from fooocusd.jobs.loader import parse_job_file
from fooocusd.jobs.name_checks import check_job_names, with_preset
from fooocusd.jobs.preset_check import job_files_warning, missing_job_files
from fooocusd.jobs.presets import preset_for_subfolder, preset_search_dirs
from fooocusd.jobs.spec import JobSpec, image_attached_after_parsing
from fooocusd.outbox.atomic import publish_bytes
from fooocusd.settings import Settings


@dataclass(frozen=True)
class Companion:
    """A picture that goes with the job file: where it is, and its path relative to the job file."""

    source: Path
    relpath: str


def submit_file(
    source: Path,
    target_dir: Path,
    inbox: Path,
    settings: Settings,
    warn: Callable[[str], object] = lambda _text: None,
    dry_run: bool = False,
) -> list[Path]:
    """Copy ``source`` (and its pictures) into ``target_dir``; the paths written, the job file last.

    ``warn`` is told of each job that names model files that are not installed (it is submitted
    all the same, as the daemon queues it: the files may be there by the time it runs). With
    ``dry_run`` every check runs and the paths that would be written are returned; nothing is.
    """
    if not source.is_file():
        raise InvalidInput(
            f"{source} is not a file", hint="give the path of a .txt, .toml, .json or image file"
        )
    # Written under the name the daemon would give it (``readable_names``), so --wait finds it.
    name = readable(source.name)
    companions: list[Companion] = []
    if source.suffix.lower() in JOB_EXTENSIONS:
        with image_attached_after_parsing():  # a picture beside it may stand in for the prompt
            specs = parse_job_file(source, max_job_file_bytes=settings.intake.max_job_file_bytes)
        relpath = _inbox_relpath(target_dir / name, inbox)
        for warning in refuse_jobs_that_cannot_work(specs, relpath, settings):
            warn(f"{source.name}{warning}")
        companions = pictures_for(source, specs, inbox)
    to_write = [(companion.source, target_dir / readable(companion.relpath)) for companion in companions]
    for _, target in to_write:
        refuse_what_the_daemon_would_not_take(_inbox_relpath(target, inbox), settings)
    to_write = [(path, target) for path, target in to_write if not _already_there(path, target)]
    job_target = target_dir / name
    if job_target.exists():
        if any(PurePosixPath(companion.relpath).parent == PurePosixPath(".") for companion in companions):
            raise InvalidInput(
                f"the inbox already holds {_inbox_relpath(job_target, inbox)}, and the pictures beside "
                f"{source.name} pair with it by name",
                hint="wait until the daemon has taken the one in the inbox, "
                "or rename the job file and its pictures",
            )
        job_target = unique_destination(target_dir, name)
    if dry_run:
        return [target for _, target in to_write] + [job_target]
    written = []
    for path, target in [*to_write, (source, job_target)]:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Written under a hidden temporary name the daemon ignores, then renamed into place.
        publish_bytes(target, path.read_bytes(), umask=settings.outbox.umask)
        written.append(target)
    return written


def refuse_jobs_that_cannot_work(specs: list[JobSpec], relpath: str, settings: Settings) -> list[str]:
    """The intake's checks of the preset, styles, sampler and scheduler each job would run with,
    and its warnings about the model files they would use: one for each job that lacks some,
    to follow the file's name.

    Only the sampler's and scheduler's names are checked (``check_sampler_names``), not whether
    diffusers can run the pair, so that submitting stays a fraction of a second; the intake checks
    that part.
    """
    paths = settings.paths.resolved()
    preset_dirs = preset_search_dirs(paths.presets)
    styles = load_styles([paths.styles] if paths.styles else [])
    routed = preset_for_subfolder(relpath, preset_dirs)
    warnings: list[str] = []
    for number, spec in enumerate(specs, start=1):
        place = f"job {number}" if len(specs) > 1 else ""
        spec, preset, preset_name = with_preset(spec, routed, place, settings, preset_dirs)
        check_job_names(spec, preset, preset_name, place, settings, styles, check_sampler_names)
        missing = missing_job_files(spec, preset, settings, styles, paths.models)
        if missing:
            warnings.append(job_files_warning(missing, place))
    return warnings


def pictures_for(job_file: Path, specs: list[JobSpec], inbox: Path) -> list[Companion]:
    """The pictures ``job_file`` (read as ``specs``) names, then those beside it that the intake
    pairs with it by name.

    A picture named by a path into the inbox (``~/fooocusd/inbox/refs/cat.png``) is there already
    and is left out. Raises ``InvalidInput`` when the file names a picture that is not there or
    lies outside the job file's folder.
    """
    folder = job_file.parent.resolve()
    found: dict[str, Companion] = {}
    for spec in specs:
        for written in paths_named_by(spec):
            path = resolve_written_path(written, job_file).resolve()
            if path.is_relative_to(inbox.resolve()):
                continue
            if not path.is_relative_to(folder):
                raise InvalidInput(
                    f"{job_file.name} names {written}, outside its own folder, so it cannot go with it",
                    where=written,
                    hint="put the picture beside the job file (or in a folder below it), and name it so",
                )
            if not path.is_file():
                raise InvalidInput(
                    f"{job_file.name} names {written}, which is not there",
                    where=written,
                    hint=f"put it beside {job_file.name} (paths are relative to the job file), "
                    "then submit again",
                )
            relpath = path.relative_to(folder).as_posix()
            found.setdefault(relpath, Companion(path, relpath))
    for path in files_beside(job_file, [*image_names_for(job_file.stem), *mask_names_for(job_file.stem)]):
        found.setdefault(path.name, Companion(path, path.name))
    return list(found.values())


def refuse_what_the_daemon_would_not_take(relpath: str, settings: Settings) -> None:
    """Submitting a file the intake would ignore leaves it in the inbox forever; one it refuses
    ends in failed/. Both are better said now, by the command that was given the file."""
    intake = settings.intake
    verdict = classify_name(relpath, intake.ignore_patterns)
    if verdict.kind is Kind.IGNORE:
        raise InvalidInput(
            f"the daemon would never pick up {relpath}: {verdict.reason}",
            hint="give it a plain name, or another --subdir (no leading dot, no temporary-file "
            "ending), or change intake.ignore_patterns",
        )
    if verdict.kind is Kind.CONFLICT and intake.conflict_copies == "quarantine":
        raise InvalidInput(
            f"the daemon would set {relpath} aside: {verdict.reason}",
            hint="rename it without the conflict marker",
        )
    if verdict.kind is Kind.UNSUPPORTED:
        raise InvalidInput(f"{relpath}: {verdict.reason}", hint="submit a .txt, .toml, .json or image file")


def _already_there(source: Path, target: Path) -> bool:
    """True when ``target`` holds the same bytes; ``InvalidInput`` when it holds other ones."""
    if not target.exists():
        return False
    if target.is_file() and target.read_bytes() == source.read_bytes():
        return True
    raise InvalidInput(
        f"the inbox already holds a different {target.name} at {target}",
        hint="wait until the daemon has taken it, or rename the picture and the job's reference to it",
    )


def _inbox_relpath(path: Path, inbox: Path) -> str:
    return path.relative_to(inbox).as_posix()
