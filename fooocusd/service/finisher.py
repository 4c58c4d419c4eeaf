"""Moving claimed inputs out of the state folder once all their jobs have ended.

Targets are recorded in the journal (``finishing``) before anything moves, so a crash half-way
is completed by start-up reconciliation with the same names. Daemons sharing done/ and failed/
may pick the same free name at once: the loser records the next free one, then moves there.

A move that fails (done/ on a full disk or a share that went away, a folder it may not write)
leaves the input in processing/, says why once, and is tried again later, 5 s doubling to
5 minutes apart; the daemon carries on meanwhile, and a stop leaves it to the next start.
"""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from loguru import logger

from fooocusd.crashpoints import crashpoint
from fooocusd.errors import FooocusdError, TransientError
from fooocusd.intake.claim import move_durably, unique_destination
from fooocusd.journal.journal import Journal
from fooocusd.journal.rows import InputRow, InputState
from fooocusd.outbox.atomic import publish_bytes
from fooocusd.outbox.folder_disk import FolderDisk
from fooocusd.service.failing import error_file_for
from fooocusd.service.folders import Folders
from fooocusd.settings import Settings

FIRST_RETRY_SECONDS = 5.0
LONGEST_RETRY_SECONDS = 300.0


@dataclass
class _Unmoved:
    """An input whose move out of processing/ failed: why, and when to try again."""

    reason: str
    since: float
    next_try: float
    delay: float


class Finisher:
    def __init__(
        self,
        settings: Settings,
        folders: Folders,
        journal: Journal,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.folders = folders
        self.journal = journal
        self.clock = clock
        self.failed_inputs = 0
        self._unmoved: dict[int, _Unmoved] = {}
        # The disks done/ and failed/ (made at start) are on, to tell a share gone from a deletion.
        self._disks = {folder: FolderDisk(folder) for folder in (folders.done, folders.failed, folders.kept)}

    def finish_ready(self) -> int:
        """Move the inputs whose jobs have all ended (and retry the moves that failed, when due);
        returns how many were moved."""
        count = 0
        sources = self._to_finish()
        for gone in set(self._unmoved) - {source.id for source in sources}:
            del self._unmoved[gone]  # its jobs were retried meanwhile, or another process moved it
        for source in sources:
            unmoved = self._unmoved.get(source.id)
            if unmoved is not None and self.clock() < unmoved.next_try:
                continue
            try:
                if source.state == InputState.FINISHING:
                    finish_recorded_moves(self.journal, source)
                    logger.info("{} → {}", source.relpath, source.final_dir or "deleted")
                else:
                    self._finish(source)
            except (OSError, TransientError) as exc:
                self._cannot_move(source, exc)
                continue
            if unmoved is not None:
                del self._unmoved[source.id]
                logger.info(
                    "{} could be moved after all, {:.0f} s after the first try",
                    source.relpath,
                    self.clock() - unmoved.since,
                )
            count += 1
        return count

    def pending(self) -> bool:
        """An input waits to be moved that has not failed to move yet."""
        return any(source.id not in self._unmoved for source in self._to_finish())

    @property
    def unmoved(self) -> int:
        """Inputs whose jobs have ended but which could not be moved out of processing/."""
        return len(self._unmoved)

    def _to_finish(self) -> list[InputRow]:
        # 'finishing' at run time: a move that failed after its targets were recorded.
        return [*self.journal.inputs_finishing(), *self.journal.inputs_ready_to_finish()]

    def _cannot_move(self, source: InputRow, exc: OSError | TransientError) -> None:
        reason, hint = _why_not_moved(exc, self.folders)
        now = self.clock()
        before = self._unmoved.get(source.id)
        delay = FIRST_RETRY_SECONDS if before is None else min(before.delay * 2, LONGEST_RETRY_SECONDS)
        self._unmoved[source.id] = _Unmoved(reason, before.since if before else now, now + delay, delay)
        if before is not None and before.reason == reason:
            logger.debug("{} still cannot be moved: {}", source.relpath, reason)
            return
        logger.error(
            "could not move {} out of {}: {}; {}. It stays there and is tried again by itself "
            "(first in {:.0f} s, then less often)",
            source.relpath,
            source.files[0].claimed_path.parent if source.files else self.folders.processing,
            reason,
            hint,
            delay,
        )

    def _finish(self, source) -> None:  # type: ignore[no-untyped-def]
        jobs = self.journal.jobs_for_input(source.id)
        failed = [job for job in jobs if job.state == "failed"]
        cancelled = any(job.state == "cancelled" for job in jobs)
        subdir = str(PurePosixPath(source.relpath).parent)
        subdir = "" if subdir == "." else subdir
        files = self.journal.files_for_input(source.id)
        policy = self.settings.outbox.after_success
        if failed or (cancelled and policy == "delete"):
            # A cancelled job's images were never made: its input stays, for `fooocusd retry`.
            policy = "move"
        finished = self.folders.failed if failed else self.folders.done
        root = self.folders.kept if policy == "keep" else finished
        self._disks[root].check()  # never onto the bare mount point of a share gone
        target_dir = root / subdir
        target_dir.mkdir(parents=True, exist_ok=True)
        finals: dict[str, str | None] = {}
        for file in files:
            finals[file.claimed_path] = (
                None
                if policy == "delete"
                else str(unique_destination(target_dir, Path(file.source_path).name))
            )
        if failed:
            # Written before the moves are journaled: reconciliation only completes the moves, so
            # a crash in between must not leave a failed input without its reason.
            first_final = next(value for value in finals.values() if value)
            report = _failure_report(source.relpath, jobs)
            publish_bytes(
                error_file_for(Path(first_final)),
                report.encode("utf-8"),
                umask=self.settings.outbox.umask,
                overwrite=True,
            )
        self.journal.begin_finish(source.id, str(target_dir), finals)
        crashpoint("after_begin_finish")
        if failed:
            self.failed_inputs += 1

        def retarget(claimed: str, taken: Path, final: Path) -> None:
            retarget_in_journal(self.journal, source.id)(claimed, taken, final)
            if failed and str(taken) == first_final:  # the report goes with the first file
                umask = self.settings.outbox.umask
                publish_bytes(error_file_for(final), report.encode("utf-8"), umask=umask, overwrite=True)

        complete_moves(finals, retarget)
        self.journal.complete_finish(source.id)
        verdict = "failed" if failed else "cancelled" if cancelled else "done"
        logger.info("{} {} → {}", source.relpath, verdict, target_dir if policy != "delete" else "deleted")


def finish_recorded_moves(journal: Journal, source: InputRow) -> None:
    """Complete the moves recorded for an input in state 'finishing' (after a crash, or a move
    that failed), under the recorded names."""
    files = journal.files_for_input(source.id)
    complete_moves({f.claimed_path: f.final_path for f in files}, retarget_in_journal(journal, source.id))
    journal.complete_finish(source.id)


def _why_not_moved(exc: OSError | TransientError, folders: Folders) -> tuple[str, str]:
    """A plain reason and what to do about it."""
    targets = f"{folders.done} and {folders.failed}"
    healthy = f"check that {targets} are on a healthy, writable disk"
    if isinstance(exc, FooocusdError):
        return exc.message, exc.hint or healthy
    where = f" ({exc.filename})" if exc.filename else ""
    reason = f"{exc.strerror or exc}{where}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return reason, f"free some space on the disk that holds {targets} (`df -h {folders.done}`)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return reason, f"let the user running fooocusd write to {targets} (check owner, mode and mount)"
    return reason, healthy


Retarget = Callable[[str, Path, Path], None]
"""``(claimed, taken_target, new_target)``: record the new target before the file moves there."""


def retarget_in_journal(journal: Journal, input_id: int) -> Retarget:
    def retarget(claimed: str, _taken: Path, final: Path) -> None:
        journal.retarget_final_path(input_id, claimed, final)

    return retarget


def complete_moves(finals: dict[str, str | None], retarget: Retarget | None = None) -> None:
    """Idempotent: safe to run again after a crash at any point. Without ``retarget``, a target
    name someone else took meanwhile raises ``FileExistsError``."""
    for claimed, final in finals.items():
        claimed_path = Path(claimed)
        if not claimed_path.exists():
            continue
        if final is None:
            claimed_path.unlink()
        else:
            _move_to_target(claimed, Path(final), retarget)
        parent = claimed_path.parent
        if parent.exists() and not any(parent.iterdir()):
            shutil.rmtree(parent, ignore_errors=True)


def _move_to_target(claimed: str, final: Path, retarget: Retarget | None, attempts: int = 100) -> None:
    for _ in range(attempts):
        try:
            move_durably(Path(claimed), final)
            return
        except FileExistsError:
            if retarget is None:
                raise
        taken, final = final, unique_destination(final.parent, final.name)
        retarget(claimed, taken, final)
    raise FileExistsError(f"no free name for {final.name} in {final.parent} after {attempts} tries")


def _failure_report(relpath: str, jobs) -> str:  # type: ignore[no-untyped-def]
    lines = [f"fooocusd could not finish {PurePosixPath(relpath).name}.", ""]
    for job in jobs:
        if job.state != "failed":
            continue
        heading = f"Job {job.seq + 1} of {len(jobs)}:" if len(jobs) > 1 else "What went wrong:"
        lines += [heading, job.error or "unknown error", ""]
    done = [job for job in jobs if job.state == "done"]
    if done:
        lines.append(f"{len(done)} other job(s) in this file finished; their images are in the outbox.")
    name = PurePosixPath(relpath).name
    lines.append(f"To run it again, fix the problem (in {name} here, if the file is at fault), then run:")
    if len(jobs) > 1:
        ids = ", ".join(str(job.id) for job in jobs if job.state == "failed")
        lines.append(f"  fooocusd retry <job id>   (its failed jobs: {ids})")
    else:
        lines.append(f"  fooocusd retry {relpath}")
    lines.append("A file changed here goes back into the inbox and is read again; an unchanged one")
    lines.append("runs again as it was. Dropping the fixed file into the inbox yourself works as well.")
    return "\n".join(lines) + "\n"
