"""What a name in the inbox is: a job, an image, a mask, a conflict copy, junk to ignore, or unsupported.

Everything here works on names only (a path relative to the inbox, with ``/`` separators);
nothing touches the disk. The rules are tables so that adding a tool's temp-name convention is
one line. Order of the checks:

1. a folder anywhere in the path is ignored (NAS metadata, trash, any hidden folder) → IGNORE
2. the user's extra fnmatch patterns → IGNORE
3. temp, partial and junk names of sync tools, browsers, editors and OSes → IGNORE
4. any other hidden (dot) file → IGNORE
5. conflict copies made by sync tools → CONFLICT (``Verdict.conflict_kind`` says what it would be)
6. by extension: ``.txt``/``.toml`` → JOB, ``<stem>.mask.<image ext>`` → MASK, images → IMAGE
7. anything else → UNSUPPORTED (it goes to ``failed/`` with a message listing accepted types)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath


class Kind(StrEnum):
    IGNORE = "ignore"
    CONFLICT = "conflict"
    JOB = "job"
    IMAGE = "image"
    MASK = "mask"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str = ""
    # For CONFLICT only: what the file would be if the conflict policy says "process".
    conflict_kind: Kind | None = None


JOB_EXTENSIONS: frozenset[str] = frozenset({".txt", ".toml", ".json"})
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    # .jfif: what browsers on Windows often name a JPEG saved from a web page.
    {".png", ".jpg", ".jpeg", ".jfif", ".webp", ".heic", ".heif", ".avif", ".tif", ".tiff", ".bmp", ".gif"}
)
MASK_MARKER = ".mask"
ACCEPTED_TYPES_TEXT = (
    "a prompt file (.txt, .toml or .json), an image (.png, .jpg, .webp, .heic, .avif, .tif, .bmp, .gif), "
    "or an image plus a same-named .txt/.toml/.json and optional <name>.mask.png"
)


def _rules(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[re.Pattern[str], str], ...]:
    return tuple((re.compile(pattern, re.IGNORECASE), reason) for pattern, reason in pairs)


# Folder names (one path component). A match anywhere in the path ignores everything below it.
IGNORED_DIR_RULES = _rules(
    [
        (r"^\.fooocusd.*$", "fooocusd's own working folder"),
        (r"^\.stfolder$", "Syncthing folder marker"),
        (r"^\.stversions$", "Syncthing old versions"),
        (r"^\.dropbox\.cache$", "Dropbox staging folder"),
        (r"^\.Trash-.*$", "desktop trash folder"),
        (r"^\.Trashes$", "macOS trash folder"),
        (r"^\.Spotlight-V100$", "macOS Spotlight index"),
        (r"^\.fseventsd$", "macOS event log"),
        (r"^\.TemporaryItems$", "macOS temporary items"),
        (r"^\.DocumentRevisions-V100$", "macOS document versions"),
        (r"^\.@__thumb$", "QNAP thumbnails"),
        (r"^\.~tmp~$", "rsync --delay-updates staging folder"),
        (r"^@eaDir$", "Synology metadata folder"),
        (r"^@Recycle$", "QNAP recycle bin"),
        (r"^@Recently-Snapshot$", "QNAP snapshots"),
        (r"^#recycle$", "Synology recycle bin"),
        (r"^#snapshot$", "Synology snapshots"),
        (r"^__MACOSX$", "macOS zip metadata"),
        (r"^\$RECYCLE\.BIN$", "Windows recycle bin"),
        (r"^System Volume Information$", "Windows system folder"),
        (r"^lost\+found$", "filesystem recovery folder"),
        (r"^.+\.download$", "Safari download in progress"),
        (r"^\..*$", "hidden folder"),
    ]
)

# File names (last path component). First match wins, so specific reasons come before generic ones.
IGNORED_FILE_RULES = _rules(
    [
        (r"^\.fooocusd-", "fooocusd's own temporary file"),
        (r"\.fooocusd-.*\.part$", "fooocusd's own temporary file"),
        (r"^\.syncthing\..*\.tmp$", "Syncthing download in progress"),
        (r"^~syncthing~.*\.tmp$", "Syncthing download in progress"),
        (r"^\.stignore$|^\.stglobalignore$", "Syncthing ignore list"),
        (r"^\..+\.~[0-9a-f]{8}$", "Nextcloud/ownCloud download in progress"),
        (
            r"^\.?_?sync_.*\.db.*$|^\.owncloudsync\.log.*$|^\.csync_journal\.db.*$",
            "Nextcloud/ownCloud sync database",
        ),
        (r"\.ocTransferId\d+\.part$", "Nextcloud/ownCloud upload in progress"),
        (r"^\.dropbox(\.attr)?$|^rules\.dropboxignore$", "Dropbox metadata"),
        (r"\.partial$", "rclone transfer in progress"),
        (r"\.filepart$", "WinSCP/FTP upload in progress"),
        (r"\.crdownload$", "Chrome/Edge download in progress"),
        (r"\.part$", "download in progress (Firefox, KIO, Nextcloud)"),
        (r"\.download$", "Safari download in progress"),
        (r"\.opdownload$", "Opera download in progress"),
        (r"\.crswap$", "Chrome/Edge save in progress"),
        (r"\.sb-[0-9a-f]{8}-[A-Za-z0-9]{6}$", "macOS safe-save in progress"),
        (r"\.!(qb|ut|bt)$", "torrent download in progress"),
        (r"\.!sync$", "Resilio Sync download in progress"),
        (r"\.aria2$", "aria2 download control file"),
        (r"\.gstmp$", "gsutil download in progress"),
        (r"^~\$", "Microsoft Office owner file"),
        (r"^~WRL\d+\.tmp$", "Microsoft Office temporary file"),
        (r"^\.~lock\..*#$", "LibreOffice lock file"),
        (r"^\..*\.sw[a-p]$|^\..*\.sw[a-p]x$", "vim swap file"),
        (r"^4913$", "vim write test file"),
        (r"\.kate-swp$", "Kate swap file"),
        (r"^\.#", "Emacs lock file"),
        (r"^#.*#$", "Emacs autosave file"),
        (r"~$", "editor backup file"),
        (r"^\.goutputstream-", "GNOME (GIO) save in progress"),
        (r"\.tmp$", "temporary file"),
        (r"^\._", "macOS AppleDouble metadata"),
        (r"^\.DS_Store$", "macOS folder metadata"),
        (r"^\.localized$", "macOS folder metadata"),
        (r"^Icon\r$", "macOS folder icon"),
        (r"^\.apdisk$", "macOS network disk metadata"),
        (r"^\.VolumeIcon\.icns$", "macOS volume icon"),
        (r"^Thumbs\.db$|^ehthumbs(_vista)?\.db$", "Windows thumbnail cache"),
        (r"^desktop\.ini$", "Windows folder settings"),
        (r":Zone\.Identifier$", "Windows download marker (copied in with a file, e.g. into WSL)"),
        (r"^\.nfs[0-9a-f]+", "NFS silly-rename of a deleted open file"),
        (r"^\.directory$", "KDE folder settings"),
        (r"@SynoEAStream$|@SynoResource$", "Synology metadata"),
        (r"^\..*$", "hidden file"),
    ]
)

CONFLICT_RULES = _rules(
    [
        (r"\.sync-conflict-\d{8}-\d{6}-[A-Z0-9]{7}", "Syncthing conflict copy"),
        (r"\s*\([^()]*['’]s conflicted copy \d{4}-\d{2}-\d{2}[^()]*\)", "Dropbox conflicted copy"),
        (r"\s*\(conflicted copy[^()]*\)", "Nextcloud/ownCloud conflicted copy"),
        (r"_conflict-", "Nextcloud/ownCloud conflict copy (legacy name)"),
    ]
)


def classify_name(relpath: str, extra_patterns: Sequence[str] = ()) -> Verdict:
    """Classify a file by its path relative to the inbox (``/`` separators)."""
    parts = PurePosixPath(relpath).parts
    if not parts:
        return Verdict(Kind.IGNORE, "empty name")
    folders, name = parts[:-1], parts[-1]

    for folder in folders:
        reason = _first_match(IGNORED_DIR_RULES, folder)
        if reason:
            return Verdict(Kind.IGNORE, f"inside a folder that is ignored ({folder}: {reason})")
    if matches_extra_pattern(relpath, extra_patterns):
        return Verdict(Kind.IGNORE, "matches intake.ignore_patterns")
    reason = _first_match(IGNORED_FILE_RULES, name)
    if reason:
        return Verdict(Kind.IGNORE, reason)

    for pattern, reason in CONFLICT_RULES:
        if pattern.search(name):
            # What the original was: "cat.mask.sync-conflict-…-ABCDEF1.png" is a copy of a mask.
            original = pattern.sub("", name)
            return Verdict(
                Kind.CONFLICT,
                f"{reason}: a sync tool kept two versions of the same file",
                conflict_kind=_kind_by_extension(original),
            )
    content_kind = _kind_by_extension(name)
    if content_kind is Kind.UNSUPPORTED:
        return Verdict(Kind.UNSUPPORTED, _unsupported_reason(name))
    return Verdict(content_kind)


def classify_dir(relpath: str, extra_patterns: Sequence[str] = ()) -> Verdict | None:
    """IGNORE verdict when the folder (relative to the inbox) or one above it is ignored, else None."""
    parts = PurePosixPath(relpath).parts
    for folder in parts:
        reason = _first_match(IGNORED_DIR_RULES, folder)
        if reason:
            return Verdict(Kind.IGNORE, f"inside a folder that is ignored ({folder}: {reason})")
    if parts and matches_extra_pattern(relpath, extra_patterns):
        return Verdict(Kind.IGNORE, "matches intake.ignore_patterns")
    return None


def matches_extra_pattern(relpath: str, patterns: Sequence[str]) -> bool:
    """User patterns are fnmatch-style and case-insensitive; each is tried against the whole
    relative path and against every single component (so ``tmp*`` also ignores a folder ``tmp1/``)."""
    if not patterns:
        return False
    candidates = [relpath.lower(), *(part.lower() for part in PurePosixPath(relpath).parts)]
    return any(fnmatch.fnmatchcase(text, pattern.lower()) for pattern in patterns for text in candidates)


def image_stem(name: str) -> str:
    """``x.png`` → ``x``; ``x.mask.png`` → ``x`` (the stem of the image the mask belongs to)."""
    stem = PurePosixPath(name).stem
    if _is_mask(name):
        stem = stem[: -len(MASK_MARKER)]
    return stem


def _kind_by_extension(name: str) -> Kind:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in JOB_EXTENSIONS:
        return Kind.JOB
    if suffix in IMAGE_EXTENSIONS:
        return Kind.MASK if _is_mask(name) else Kind.IMAGE
    return Kind.UNSUPPORTED


def _is_mask(name: str) -> bool:
    path = PurePosixPath(name)
    stem = path.stem
    return (
        path.suffix.lower() in IMAGE_EXTENSIONS
        and stem.lower().endswith(MASK_MARKER)
        and len(stem) > len(MASK_MARKER)
    )


# Files people drop by habit, and what to do instead (what ACCEPTED_TYPES_TEXT alone does not say).
_UNSUPPORTED_ADVICE: dict[str, str] = {
    ".mov": "a video (an iPhone Live Photo's movie?): drop the photo itself",
    ".mp4": "a video: export a frame as PNG or JPEG",
    ".psd": "a Photoshop document: export it as PNG",
    ".svg": "a vector drawing: export it as PNG",
    ".zip": "an archive: unpack it into the inbox",
    ".7z": "an archive: unpack it into the inbox",
    ".rar": "an archive: unpack it into the inbox",
    ".md": "write the prompt in a .txt file",
    ".rtf": "save it as plain text (.txt)",
    ".docx": "save it as plain text (.txt)",
}


def _unsupported_reason(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    what = f"'{suffix}' files are" if suffix else "files without an extension are"
    advice = _UNSUPPORTED_ADVICE.get(suffix.lower())
    if advice:
        return f"{what} not accepted ({advice})"
    return f"{what} not accepted; drop {ACCEPTED_TYPES_TEXT}"


def _first_match(rules: tuple[tuple[re.Pattern[str], str], ...], text: str) -> str:
    for pattern, reason in rules:
        if pattern.search(text):
            return reason
    return ""
