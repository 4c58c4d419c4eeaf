"""Group ready files that belong together into one drop.

A *drop* is what becomes one job: a spec (``.toml``/``.txt``), an image, or both, plus an
optional mask. Files pair when they share a folder and a stem: ``cat.png`` + ``cat.toml``
(+ ``cat.mask.png``). Stems are compared case-sensitively but in one Unicode normalisation
(``name_spelling``: a ``café.txt`` typed on Linux pairs with a ``café.png`` from a Mac);
extensions in any case.

Rules, applied on every ``release`` call:

* spec + image both ready → released together (with the mask if ready; if a mask file exists
  but is still arriving, the drop waits for it).
* spec ready, same-stem image exists on disk but is not ready yet → held until the image is
  ready. Spec ready, no image on disk → released at once (a text-to-image job). If only a mask
  of that stem is there, the image is probably still coming, so the spec waits ``pair_wait_seconds``.
* image ready, same-stem spec exists but is not ready → held until the spec is ready.
  Image ready with no partner → held for ``pair_wait_seconds`` after it became ready (a phone
  sync may deliver the spec a little later), then released alone.
* a mask is never a job of its own: it goes with its image. A mask whose image never shows
  up is released after ``pair_wait_seconds`` as an orphan drop (``Drop.is_orphan_mask``) so the
  caller can move it to ``failed/`` with a message.
* waiting for a partner that exists but never becomes ready (a zero-byte placeholder left
  behind, a FIFO) ends after ``partner_timeout_seconds``; the file then goes alone.

Files a job file *names* (``image = "photos/cat.png"``, ``mask``, image prompts; see ``named_by``)
go with that job file, whatever their stem:

* while a held job file names a file, that file is never released as a drop of its own;
* a job file waits for the files it names: while one is on disk but still arriving (up to
  ``partner_timeout_seconds``), or for ``pair_wait_seconds`` while one is not there at all (sync
  tools deliver in any order); then it is released without it and intake fails it, naming the file;
* a named file goes with the job file that names it (``Drop.named``), marked ``shared`` when other
  held job files name it too: intake then copies it into the claim instead of moving it, and the
  last job file to go takes the file itself. Groups are released in path order, so two daemons
  sharing an inbox agree on which job file that is.

Only JOB, IMAGE and MASK files are offered, plus conflict copies the caller decided to process
(``intake.conflict_copies = "process"``), which pair as what they are a copy of
(``Ready.conflict_kind``). Everything else (UNSUPPORTED, refusals) goes straight to the caller's
failure path. Not thread-safe: use it from the daemon loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from loguru import logger

from fooocusd.intake.ignore import IMAGE_EXTENSIONS, JOB_EXTENSIONS, MASK_MARKER, Kind, image_stem
from fooocusd.intake.watcher import Ready
from fooocusd.name_spelling import comparable, spelled_on_disk

_PAIRABLE = frozenset({Kind.JOB, Kind.IMAGE, Kind.MASK})


@dataclass(frozen=True)
class NamedFile:
    """A file a job of the drop names by path. ``shared``: other waiting job files name it too."""

    ready: Ready
    shared: bool = False


@dataclass(frozen=True)
class Drop:
    spec: Ready | None = None
    image: Ready | None = None
    mask: Ready | None = None
    named: tuple[NamedFile, ...] = ()

    @property
    def parts(self) -> list[Ready]:
        """Every file of the drop: spec, image, mask, then the files its jobs name."""
        own = [part for part in (self.spec, self.image, self.mask) if part is not None]
        return [*own, *(named.ready for named in self.named)]

    @property
    def is_orphan_mask(self) -> bool:
        """A mask without its image: cannot be processed; the caller fails it with a hint."""
        return self.mask is not None and self.image is None


@dataclass
class _Held:
    ready: Ready
    since: float
    names: frozenset[Path] = frozenset()  # for a job file: the files its jobs name


@dataclass
class _Group:
    specs: list[_Held] = field(default_factory=list)
    images: list[_Held] = field(default_factory=list)
    masks: list[_Held] = field(default_factory=list)

    def all(self) -> list[_Held]:
        return [*self.specs, *self.images, *self.masks]


class _DiskLookup:
    """Answers "is this partner on disk?" during one ``release`` call.

    By default each folder is listed once per call (one ``scandir`` instead of ~20 ``lstat``s
    per held file, which matters on network shares and for bursts of thousands of images)."""

    def __init__(self, exists: Callable[[Path], bool] | None) -> None:
        self._exists = exists
        self._listings: dict[Path, frozenset[str]] = {}

    def has(self, folder: Path, name: str) -> bool:
        if self._exists is not None:
            return self._exists(folder / name)
        listing = self._listings.get(folder)
        if listing is None:
            # Letter case counts here, as in every comparison the pairer makes.
            listing = self._listings[folder] = _regular_file_names(spelled_on_disk(folder, any_case=False))
        return comparable(name) in listing


class Pairer:
    def __init__(
        self,
        pair_wait_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        partner_timeout_seconds: float | None = 3600.0,
        named_by: Callable[[Path], Iterable[Path]] | None = None,
    ) -> None:
        """``named_by(job_file)``: the files its jobs name (absolute paths); None: stems only."""
        self.pair_wait_seconds = pair_wait_seconds
        self.partner_timeout_seconds = partner_timeout_seconds
        self._named_by = named_by
        self._clock = clock
        self._groups: dict[tuple[Path, str], _Group] = {}
        # Released files still on disk are not "a partner that is still arriving" (``_normal`` paths).
        self._released: set[Path] = set()

    def offer(self, ready: Iterable[Ready], now: float | None = None) -> None:
        """Hold ready files until ``release`` decides. Raises ValueError for non-pairable kinds."""
        now = self._clock() if now is None else now
        for item in ready:
            kind = _pairing_kind(item)
            if kind is None:
                raise ValueError(
                    f"{item.relpath}: only job, image and mask files can be paired, got {item.kind}"
                )
            self._released.discard(_normal(item.path))
            group = self._groups.setdefault(_group_key(item, kind), _Group())
            bucket = _bucket(group, kind)
            bucket[:] = [held for held in bucket if held.ready.path != item.path]
            names = self._names(item.path) if kind is Kind.JOB else frozenset()
            bucket.append(_Held(item, now, names))
            bucket.sort(key=lambda held: held.ready.path.name)

    def release(self, now: float | None = None, exists: Callable[[Path], bool] | None = None) -> list[Drop]:
        """Drops that are complete now. ``exists`` tells whether a partner file is on disk;
        by default: a regular file (not a link, FIFO or folder) of that exact name."""
        now = self._clock() if now is None else now
        disk = _DiskLookup(exists)
        self._released = {path for path in self._released if disk.has(path.parent, path.name)}
        drops: list[Drop] = []
        for key in sorted(self._groups):  # path order: daemons sharing an inbox decide alike
            group = self._groups.get(key)
            if group is None:
                continue
            drops.extend(self._release_group(key, group, now, disk))
        for key in [key for key, group in self._groups.items() if not group.all()]:
            del self._groups[key]
        return drops

    def held(self) -> list[Ready]:
        """Files offered but not released yet (for status output)."""
        return [held.ready for group in self._groups.values() for held in group.all()]

    def holding(self) -> int:
        """How many files are held."""
        return sum(len(group.all()) for group in self._groups.values())

    def next_deadline(self, now: float | None = None) -> float | None:
        """The next clock time after ``now`` at which a held file may be released by time alone."""
        now = self._clock() if now is None else now
        times: list[float] = []
        for group in self._groups.values():
            for held in group.all():
                times.append(held.since + self.pair_wait_seconds)
                if self.partner_timeout_seconds is not None:
                    times.append(held.since + self.partner_timeout_seconds)
        future = [moment for moment in times if moment > now]
        return min(future, default=None)

    def _release_group(
        self, key: tuple[Path, str], group: _Group, now: float, disk: _DiskLookup
    ) -> list[Drop]:
        folder, stem = key
        drops: list[Drop] = []
        while group.all():
            spec = group.specs[0] if group.specs else None
            image = group.images[0] if group.images else None
            mask = group.masks[0] if group.masks else None

            # Partners always share the group key, so "offered already" means "in this group".
            def arriving(names: list[str]) -> bool:
                offered = {comparable(held.ready.path.name) for held in group.all()}
                return any(
                    name not in offered
                    and disk.has(folder, name)
                    and _normal(folder / name) not in self._released
                    for name in names
                )

            # Cheap time checks come first: they spare the disk checks for most held files.
            if spec and self._waits_for_named(spec, now, disk):
                break
            if spec and image:
                if (
                    mask is None
                    and not self._gave_up(min(spec.since, image.since), now)
                    and arriving(mask_names_for(stem))
                ):
                    break
                drop = Drop(spec.ready, image.ready, mask.ready if mask else None)
                _say_which_picture(spec.ready, image.ready, group.images[1:])
            elif spec:
                image_arriving = arriving(image_names_for(stem))
                if image_arriving and not self._gave_up(spec.since, now):
                    break
                if mask and not image_arriving and now - spec.since < self.pair_wait_seconds:
                    break
                drop = Drop(spec=spec.ready)
            if spec is not None:
                drop = Drop(drop.spec, drop.image, drop.mask, self._named_files(spec, drop))
            elif image:
                if now - image.since < self.pair_wait_seconds or self._is_named(image.ready.path):
                    break
                if not self._gave_up(image.since, now) and (
                    arriving(_spec_names(stem)) or (mask is None and arriving(mask_names_for(stem)))
                ):
                    break
                drop = Drop(image=image.ready, mask=mask.ready if mask else None)
            else:
                assert mask is not None
                if now - mask.since < self.pair_wait_seconds or self._is_named(mask.ready.path):
                    break
                if not self._gave_up(mask.since, now) and (
                    arriving(image_names_for(stem)) or arriving(_spec_names(stem))
                ):
                    break
                drop = Drop(mask=mask.ready)
            self._take(group, drop)
            drops.append(drop)
        return drops

    def _take(self, group: _Group, drop: Drop) -> None:
        # A shared named file stays held: the other job files that name it still need it.
        taken = {part.path for part in drop.parts} - {n.ready.path for n in drop.named if n.shared}
        for candidate in [group, *(self._group_holding(n.ready.path) for n in drop.named)]:
            if candidate is None:
                continue
            for bucket in (candidate.specs, candidate.images, candidate.masks):
                bucket[:] = [held for held in bucket if held.ready.path not in taken]
        self._released.update(_normal(path) for path in taken)

    # -- files named by job files ----------------------------------------------------------------

    def _names(self, job_file: Path) -> frozenset[Path]:
        if self._named_by is None:
            return frozenset()
        try:
            return frozenset(_normal(path) for path in self._named_by(job_file))
        except Exception:  # an unreadable job file names nothing; intake fails it with the reason
            return frozenset()

    def _held_specs(self) -> list[_Held]:
        return [held for group in self._groups.values() for held in group.specs]

    def _is_named(self, path: Path) -> bool:
        """A held job file names ``path``: it goes with that job file, never alone."""
        wanted = _normal(path)
        return any(wanted in held.names for held in self._held_specs())

    def _held_file(self, path: Path) -> _Held | None:
        wanted = _normal(path)
        for group in self._groups.values():
            for held in group.all():
                if _normal(held.ready.path) == wanted:
                    return held
        return None

    def _group_holding(self, path: Path) -> _Group | None:
        wanted = _normal(path)
        for group in self._groups.values():
            if any(_normal(held.ready.path) == wanted for held in group.all()):
                return group
        return None

    def _waits_for_named(self, spec: _Held, now: float, disk: _DiskLookup) -> bool:
        """A named file is still arriving, or not there yet and the spec has not waited long enough."""
        for path in spec.names:
            if self._held_file(path) is not None:
                continue
            on_disk = disk.has(path.parent, path.name) and path not in self._released
            if on_disk and not self._gave_up(spec.since, now):
                return True
            if not on_disk and now - spec.since < self.pair_wait_seconds:
                return True
        return False

    def _named_files(self, spec: _Held, drop: Drop) -> tuple[NamedFile, ...]:
        own = {_normal(part.path) for part in drop.parts}
        others = [held for held in self._held_specs() if held is not spec]
        named: list[NamedFile] = []
        for path in sorted(spec.names - own):
            held = self._held_file(path)
            if held is None:
                continue  # missing: intake fails the job file and names the file
            named.append(NamedFile(held.ready, shared=any(path in other.names for other in others)))
        return tuple(named)

    def _gave_up(self, since: float, now: float) -> bool:
        return self.partner_timeout_seconds is not None and now - since >= self.partner_timeout_seconds


def _normal(path: Path) -> Path:
    """Absolute, with ``.`` and ``..`` folded (links are not followed) and in one Unicode
    normalisation, for comparing paths; never for opening one."""
    return Path(comparable(os.path.normpath(os.path.abspath(path))))


def _pairing_kind(item: Ready) -> Kind | None:
    if item.refused:
        return None
    kind = item.conflict_kind if item.kind is Kind.CONFLICT else item.kind
    return kind if kind in _PAIRABLE else None


def _group_key(item: Ready, kind: Kind) -> tuple[Path, str]:
    name = item.path.name
    stem = image_stem(name) if kind is Kind.MASK else PurePosixPath(name).stem
    return item.path.parent, comparable(stem)


def _bucket(group: _Group, kind: Kind) -> list[_Held]:
    return {Kind.JOB: group.specs, Kind.IMAGE: group.images, Kind.MASK: group.masks}[kind]


def _spelled(extensions: Iterable[str]) -> list[str]:
    return sorted({variant for ext in extensions for variant in (ext, ext.upper())})


def _spec_names(stem: str) -> list[str]:
    return [stem + ext for ext in _spelled(JOB_EXTENSIONS)]


def image_names_for(stem: str) -> list[str]:
    """The names of the picture that pairs with the job file ``<stem>.txt``/``.toml``."""
    return [stem + ext for ext in _spelled(IMAGE_EXTENSIONS)]


def mask_names_for(stem: str) -> list[str]:
    """The names of the mask that pairs with ``<stem>.png`` (and so with ``<stem>.txt``)."""
    markers = (MASK_MARKER, MASK_MARKER.upper())
    return [stem + marker + ext for marker in markers for ext in _spelled(IMAGE_EXTENSIONS)]


def files_beside(path: Path, names: Iterable[str]) -> list[Path]:
    """The files in ``path``'s folder with one of ``names``, as the pairer matches them (Unicode
    normalisation aside), in the order of ``names``; for commands that gather a drop's partners."""
    try:
        with os.scandir(path.parent) as entries:
            on_disk = {comparable(entry.name): Path(entry.path) for entry in entries if entry.is_file()}
    except OSError:
        return []
    found = [on_disk.get(comparable(name)) for name in names]
    return list(dict.fromkeys(file for file in found if file is not None))


def _regular_file_names(folder: Path) -> frozenset[str]:
    try:
        with os.scandir(folder) as entries:
            return frozenset(
                comparable(entry.name) for entry in entries if entry.is_file(follow_symlinks=False)
            )
    except OSError:
        return frozenset()


def _say_which_picture(spec: Ready, image: Ready, others: list[_Held]) -> None:
    """Several pictures share the job file's name (``IMG_0042.HEIC`` and ``IMG_0042.JPG``): say
    which one it took, since the others then run as jobs of their own."""
    if others:
        logger.warning(
            "{} pairs with {}; {} (the same name) {} a job of its own. To choose, name the picture in "
            "the job file (image: {})",
            spec.relpath,
            image.path.name,
            ", ".join(held.ready.path.name for held in others),
            "runs as" if len(others) == 1 else "each run as",
            others[0].ready.path.name,
        )
