"""``fooocusd models fetch NAME``: download a catalogue entry into the first models root, verified.

Only the CLI calls this; the daemon never downloads. Steps:

1. Ask the hub for the file's metadata (``get_hf_file_metadata``: a HEAD request). For Git LFS files the
   hub reports the content's SHA-256 (``X-Linked-Etag``) and size (``X-Linked-Size``). Values pinned in
   the catalogue must agree with them.
2. Check the free space, then download with huggingface_hub's ``http_get`` into a hidden partial file
   ``.<name>.part`` in the kind folder (``<root>/loras/`` ...). An interrupted download leaves that file
   behind and the next ``fetch`` resumes it with an HTTP ``Range`` request. (``hf_hub_download`` itself
   deletes partial files on failure in huggingface_hub 1.x, so it cannot resume across runs.)
3. Hash the result. A mismatch deletes the partial file and fails; a match is fsynced and renamed
   into place atomically, so a half-written model never appears under its real name.

A folder entry (``files = [...]``: a transformers model such as the depth estimator) fetches each
file that way into a hidden ``.<name>.part/`` folder, which an interrupted run resumes, then renames
the folder into place. Its small files are kept in git rather than LFS: the hub's ETag is then
their git blob id, and that is what they are checked against.

``HF_ENDPOINT`` (a mirror) is read at call time; ``HF_TOKEN`` (gated repositories) is honoured by
huggingface_hub as usual.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.file_download import http_get

from fooocusd.durable import fsync_folder
from fooocusd.engine.model_dirs import ModelDirs, ModelFileKind
from fooocusd.errors import FooocusdError, TransientError, suggest

CATALOGUE_FILE = Path(__file__).resolve().parent.parent / "data" / "catalogue.toml"
DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_BLOB = re.compile(r"[0-9a-f]{40}")
_SPARE_BYTES = 256 * 1024**2  # keep some room for the journal and the outbox


class CatalogueError(FooocusdError):
    """The name is not in the catalogue, or the catalogue itself is broken."""


class FetchError(FooocusdError):
    """A download that cannot succeed as asked (missing upstream, checksum mismatch, disk full)."""


class FetchNetworkError(TransientError):
    """The hub could not be reached; trying again later may work."""


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    kind: ModelFileKind
    repo: str
    file: str
    revision: str = "main"
    size: int = 0
    sha256: str = ""
    source: str = ""
    save_as: str = ""
    """File name in the kind folder when the repository's name is too generic (model.safetensors)."""
    files: tuple[str, ...] = ()
    """A folder entry (a transformers model): these files of the repository go into a folder of
    the entry's name in the kind folder, and ``file`` is empty."""

    @property
    def file_name(self) -> str:
        """The name of what lands in the kind folder: the file, or the folder of a folder entry."""
        if self.files:
            return self.name
        return self.save_as or Path(self.file).name


@dataclass(frozen=True)
class FetchResult:
    path: Path
    sha256: str
    size: int
    downloaded: bool  # False: the file was already there
    resumed_from: int = 0


ProgressHook = Callable[[str], None]


def load_catalogue(path: Path = CATALOGUE_FILE) -> dict[str, CatalogueEntry]:
    """Name → entry, in file order. Raises ``CatalogueError`` naming the bad entry."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"cannot read the model catalogue {path}: {exc}") from exc
    entries: dict[str, CatalogueEntry] = {}
    for raw in data.get("model", []):
        entry = _entry(raw, path)
        entries[entry.name] = entry
    return entries


def lookup(name: str, catalogue: dict[str, CatalogueEntry]) -> CatalogueEntry:
    """The entry for ``name`` (case-insensitive, ``.safetensors`` optional), or for the file it saves
    (``face_detection_yunet_2023mar.onnx``)."""
    wanted = name.strip().removesuffix(".safetensors").lower()
    for entry in catalogue.values():
        if wanted in (entry.name.lower(), entry.file_name.lower()):
            return entry
    guess = suggest(wanted, catalogue, cutoff=0.5, limit=2, ignore_case=True)
    raise CatalogueError(
        f"{name!r} is not in the model catalogue{guess}",
        hint="fetch one of: " + ", ".join(catalogue) + ". Other files: download them yourself into a "
        "models folder (see `fooocusd models list`)",
    )


def catalogue_name(name: str, catalogue: dict[str, CatalogueEntry] | None = None) -> str | None:
    """The name ``fooocusd models fetch`` takes for the file ``name``, or None when it has none.
    ``catalogue`` saves reading the bundled one again when several names are looked up."""
    try:
        return lookup(Path(name).name, catalogue if catalogue is not None else load_catalogue()).name
    except CatalogueError:
        return None


def fetch_suggestion(name: str) -> str:
    """``", or run fooocusd models fetch <name>"`` when the catalogue has ``name``; else empty."""
    entry_name = catalogue_name(name)
    return f", or run fooocusd models fetch {entry_name}" if entry_name else ""


def fetch(
    entry: CatalogueEntry,
    dirs: ModelDirs,
    *,
    force: bool = False,
    progress: bool = False,
    say: ProgressHook | None = None,
) -> FetchResult:
    """Download ``entry`` into its kind folder of the first root, verified. See the module docstring."""
    say = say or (lambda _message: None)
    folder = dirs.download_folder(entry.kind)
    target = folder / entry.file_name
    if target.exists() and not force:
        say(f"{target} is already there (use --force to download it again)")
        size = target.stat().st_size if target.is_file() else _folder_size(target)
        return FetchResult(target, "", size, downloaded=False)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create {folder}: {exc.strerror}", hint="check paths.models") from exc
    if entry.files:
        return _fetch_folder(entry, target, progress, say)
    partial = folder / f".{entry.file_name}.part"
    sha256, size, resumed_from = _fetch_file(entry, entry.file, partial, progress, say, shown_as=target)
    _publish(partial, target)
    return FetchResult(target, sha256, size, downloaded=True, resumed_from=resumed_from)


def _fetch_folder(entry: CatalogueEntry, target: Path, progress: bool, say: ProgressHook) -> FetchResult:
    """Each file into a hidden staging folder (kept, to resume), then the folder into place at once."""
    staging = target.parent / f".{entry.name}.part"
    staging.mkdir(exist_ok=True)
    total = resumed = 0
    for repo_file in entry.files:
        done = staging / repo_file
        if done.is_file():  # verified by an earlier, interrupted run
            total += done.stat().st_size
            continue
        done.parent.mkdir(parents=True, exist_ok=True)
        partial = done.parent / f".{done.name}.part"
        shown_as = target / repo_file
        _sha256, size, resumed_from = _fetch_file(entry, repo_file, partial, progress, say, shown_as=shown_as)
        os.replace(partial, done)
        total += size
        resumed += resumed_from
    for folder in {(staging / name).parent for name in entry.files}:
        fsync_folder(folder)
    if target.exists():  # --force: the old folder goes only once the new one is complete
        shutil.rmtree(target)
    _publish(staging, target)
    say(f"{target} is complete: {', '.join(entry.files)}")
    return FetchResult(target, "", total, downloaded=True, resumed_from=resumed)


def _fetch_file(
    entry: CatalogueEntry, repo_file: str, partial: Path, progress: bool, say: ProgressHook, *, shown_as: Path
) -> tuple[str, int, int]:
    """Download one file of ``entry`` into ``partial`` (resuming it) and verify it against the hub:
    its SHA-256 (``sha256``, size and the bytes resumed from)."""
    url = hf_hub_url(entry.repo, repo_file, revision=entry.revision, endpoint=_endpoint())
    expected = _expected(entry, url)
    resume_from = _resumable_size(partial, expected.size)
    _check_free_space(partial.parent, expected.size - resume_from if expected.size else 0, entry)
    say(
        f"downloading {entry.repo}/{repo_file} → {shown_as}"
        + (f" (resuming at {resume_from} bytes)" if resume_from else "")
    )
    _download(url, partial, resume_from, expected.size, progress, entry)

    actual_size = partial.stat().st_size
    actual, git_blob = _digests(partial, actual_size)
    wrong_content = (expected.sha256 and actual != expected.sha256) or (
        expected.git_blob and git_blob != expected.git_blob
    )
    if wrong_content or (expected.size and actual_size != expected.size):
        partial.unlink(missing_ok=True)
        wanted = expected.sha256 or (f"git blob {expected.git_blob}" if expected.git_blob else "any")
        raise FetchError(
            f"{shown_as.name} failed verification: got SHA-256 {actual} ({actual_size} bytes), expected "
            f"{wanted} ({expected.size or 'any'} bytes); the download was deleted",
            where=url,
            hint="run the command again; if it keeps failing the upstream file changed or a proxy alters it",
        )
    say(
        f"verified SHA-256 {actual}"
        if expected.sha256 or not expected.git_blob
        else f"verified {shown_as.name}"
    )
    return actual, actual_size, resume_from


def _digests(path: Path, size: int) -> tuple[str, str]:
    """The file's SHA-256, and its git blob id (the hub's ETag for files not stored in LFS)."""
    sha256 = hashlib.sha256()
    git_blob = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            sha256.update(chunk)
            git_blob.update(chunk)
    return sha256.hexdigest(), git_blob.hexdigest()


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _entry(raw: Any, path: Path) -> CatalogueEntry:
    kinds = get_args(ModelFileKind)
    try:
        entry = CatalogueEntry(
            name=str(raw["name"]),
            kind=raw["kind"],
            repo=str(raw["repo"]),
            file=str(raw.get("file", "")),
            revision=str(raw.get("revision", "main")),
            size=int(raw.get("size", 0)),
            sha256=str(raw.get("sha256", "")).lower(),
            source=str(raw.get("source", "")),
            save_as=str(raw.get("save_as", "")),
            files=tuple(str(name) for name in raw.get("files", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CatalogueError(f"broken entry in {path}: {raw!r} ({exc})") from exc
    if bool(entry.files) == bool(entry.file) or (
        entry.files and (entry.sha256 or entry.size or entry.save_as)
    ):
        raise CatalogueError(
            f"broken entry {entry.name!r} in {path}: give either file (with sha256, size, save_as) or files"
        )
    if any(name.startswith(("/", ".")) or ".." in Path(name).parts for name in entry.files):
        raise CatalogueError(f"broken entry {entry.name!r} in {path}: files must stay inside the repository")
    if entry.save_as and Path(entry.save_as).name != entry.save_as:
        raise CatalogueError(f"broken entry {entry.name!r} in {path}: save_as must be a plain file name")
    if entry.kind not in kinds or (entry.sha256 and not _SHA256.fullmatch(entry.sha256)):
        raise CatalogueError(
            f"broken entry {entry.name!r} in {path}: kind must be one of {kinds}, sha256 64 hex"
        )
    return entry


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class _Expected:
    sha256: str
    """The hub's LFS SHA-256, or the catalogue's pinned one; empty for a file not in LFS."""
    git_blob: str
    """The hub's git blob id (its ETag) for a file not in LFS; empty otherwise."""
    size: int


def _expected(entry: CatalogueEntry, url: str) -> _Expected:
    """What the download must be: the hub's LFS SHA-256 (or git blob id) and size, checked against
    the catalogue."""
    try:
        metadata = get_hf_file_metadata(url, endpoint=_endpoint(), retry_on_errors=True)
    except Exception as exc:  # huggingface_hub raises httpx, OSError and its own errors alike
        raise _explain(exc, entry, url) from exc
    etag = (metadata.etag or "").strip('"').lower()
    hub_sha256 = etag if _SHA256.fullmatch(etag) else ""
    git_blob = etag if _GIT_BLOB.fullmatch(etag) else ""  # a small file kept in git, not in LFS
    hub_size = metadata.size or 0
    if entry.sha256 and hub_sha256 and hub_sha256 != entry.sha256:
        raise FetchError(
            f"the hub now serves a different {entry.file_name} (SHA-256 {hub_sha256}) than the catalogue "
            f"pins ({entry.sha256}); nothing was downloaded",
            where=url,
            hint="upstream replaced the file; update fooocusd, or download it yourself if you trust it",
        )
    return _Expected(entry.sha256 or hub_sha256, git_blob, entry.size or hub_size)


def _resumable_size(partial: Path, expected_size: int) -> int:
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if expected_size and size > expected_size:
        partial.unlink()  # longer than the real file: not a prefix of it
        return 0
    return size


def _check_free_space(folder: Path, needed: int, entry: CatalogueEntry) -> None:
    free = shutil.disk_usage(folder).free
    if needed and free < needed + _SPARE_BYTES:
        raise FetchError(
            f"not enough disk space for {entry.file_name}: {needed / 1024**3:.2f} GiB needed, "
            f"{free / 1024**3:.2f} GiB free in {folder}",
            where=str(folder),
            hint="free some space, or list a models folder on a bigger disk first in paths.models",
        )


def _download(
    url: str, partial: Path, resume_from: int, expected_size: int, progress: bool, entry: CatalogueEntry
) -> None:
    try:
        with partial.open("ab") as handle:
            http_get(
                url,
                handle,
                resume_size=resume_from,
                headers={"Accept-Encoding": "identity"},
                expected_size=expected_size or None,
                displayed_filename=entry.file_name if progress else None,
                tqdm_class=None if progress else _Silent,
            )
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # the partial file stays, to resume once there is room
            raise FetchError(
                f"the disk filled up while downloading {entry.file_name}",
                where=str(partial.parent),
                hint="free some space and run the same command again: it resumes where it stopped",
            ) from exc
        raise _explain(exc, entry, url) from exc
    except Exception as exc:
        raise _explain(exc, entry, url) from exc


def _publish(partial: Path, target: Path) -> None:
    os.replace(partial, target)
    fsync_folder(target.parent)


def _explain(exc: BaseException, entry: CatalogueEntry, url: str) -> FooocusdError:
    if isinstance(exc, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        return FetchError(
            "downloads are switched off: HF_HUB_OFFLINE is set",
            where=url,
            hint="unset HF_HUB_OFFLINE for this command, or copy the file into a models folder yourself",
        )
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) and exc.response is not None else 0
    if status == 404:
        return FetchError(
            f"{entry.repo}/{entry.file} does not exist on {_endpoint()} (HTTP 404)",
            where=url,
            hint="the file was moved or removed upstream; update fooocusd, or download it yourself",
        )
    if status in {401, 403}:
        return FetchError(
            f"{entry.repo} refused the download (HTTP {status}): it may be gated or private",
            where=url,
            hint="accept its terms on the hub and set HF_TOKEN, or download it yourself",
        )
    if status == 0:  # no HTTP answer at all: connection refused, DNS, timeout, dropped stream
        return FetchNetworkError(
            f"could not download {entry.file_name}: {exc}",
            where=url,
            hint="check the network (or HF_ENDPOINT, if you use a mirror) and run the same command again; "
            "a partial download is resumed",
        )
    return FetchNetworkError(
        f"could not download {entry.file_name}: HTTP {status} from {_endpoint()}",
        where=url,
        hint="the hub may be having trouble; run the same command again later (it resumes)",
    )


class _Silent:
    """A do-nothing progress bar for non-interactive runs."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        self.n = 0

    def update(self, amount: int = 1) -> None:
        self.n += amount

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass
