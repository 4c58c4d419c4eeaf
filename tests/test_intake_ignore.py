from __future__ import annotations

import pytest

from fooocusd.intake.ignore import Kind, classify_dir, classify_name, image_stem

TEMP_AND_JUNK_NAMES = [
    ".syncthing.cat.png.tmp",
    "~syncthing~cat.png.tmp",
    ".cat.png.~1a2b3c4d",  # Nextcloud download
    "cat.png.ocTransferId12345.part",  # Nextcloud upload
    ".cat.png.Xy12Ab",  # rsync
    "cat.png.a1b2c3d4.partial",  # rclone
    "cat.png.filepart",  # WinSCP
    "cat.png.crdownload",  # Chrome
    "Unconfirmed 123456.crdownload",
    "cat.png.part",  # Firefox
    "cat.png.download",  # Safari
    "cat.png.opdownload",  # Opera
    "prompt.txt.crswap",  # Chrome saving through the File System Access API
    "prompt.txt.sb-1a2b3c4d-AbC123",  # macOS safe-save
    "cat.png.!qB",  # qBittorrent
    "cat.png.!ut",  # uTorrent
    "cat.png.!sync",  # Resilio Sync
    "cat.png.aria2",  # aria2's control file (beside the download)
    "cat.png_.gstmp",  # gsutil
    "~$prompt.txt",  # Office owner file
    "~WRL0001.tmp",
    ".~lock.prompt.txt#",  # LibreOffice
    ".prompt.txt.swp",  # vim
    "4913",
    "prompt.txt~",
    ".#prompt.txt",  # emacs
    "#prompt.txt#",
    ".goutputstream-ABC123",  # GIO
    "._cat.png",  # AppleDouble
    ".DS_Store",
    "Icon\r",
    "Thumbs.db",
    "desktop.ini",
    "cat.png:Zone.Identifier",  # Windows Explorer copying into WSL
    ".nfs000000000123abcd00000001",
    ".directory",
    ".fooocusd-cat.png.1a2b.part",
    ".cat.fooocusd-1a2b.part",
    ".hidden.toml",
    "cat.png@SynoEAStream",
]


@pytest.mark.parametrize("name", TEMP_AND_JUNK_NAMES)
def test_temp_partial_and_junk_names_of_each_tool_are_ignored(name: str) -> None:
    verdict = classify_name(name)
    assert verdict.kind is Kind.IGNORE, name
    assert verdict.reason


@pytest.mark.parametrize(
    "relpath",
    [
        "@eaDir/cat.png",
        "sub/@eaDir/cat.png@SynoEAStream",
        "#recycle/old.toml",
        "#snapshot/x.png",
        ".Trash-1000/files/cat.png",
        ".stversions/cat~20240101.png",
        ".dropbox.cache/cat.png",
        "$RECYCLE.BIN/cat.png",
        "__MACOSX/cat.png",
        ".git/config.toml",
        "a/.hidden/b/prompt.txt",
        ".fooocusd/processing/x.toml",
        "cat.png.download/data.png",
    ],
)
def test_files_inside_ignored_or_hidden_folders_are_ignored_anywhere_in_the_path(relpath: str) -> None:
    assert classify_name(relpath).kind is Kind.IGNORE


def test_ignore_reason_names_the_tool() -> None:
    assert "Syncthing" in classify_name(".syncthing.cat.png.tmp").reason
    assert "Synology" in classify_name("@eaDir/x.png").reason


@pytest.mark.parametrize(
    ("name", "tool", "content_kind"),
    [
        ("cat.sync-conflict-20240131-142501-ABCDEF1.png", "Syncthing", Kind.IMAGE),
        ("prompt.sync-conflict-20240131-142501-7ZZZZZZ.toml", "Syncthing", Kind.JOB),
        ("prompt (conflicted copy 2024-01-31 142501).txt", "Nextcloud", Kind.JOB),
        ("prompt (conflicted copy alice 2024-01-31 142501).toml", "Nextcloud", Kind.JOB),
        ("prompt_conflict-20240131-142501.txt", "legacy", Kind.JOB),
        ("cat (Bob's conflicted copy 2024-01-31).png", "Dropbox", Kind.IMAGE),
        ("cat (Bob’s conflicted copy 2024-01-31).png", "Dropbox", Kind.IMAGE),
        ("cat.mask.sync-conflict-20240131-142501-ABCDEF1.png", "Syncthing", Kind.MASK),
        ("cat.mask (conflicted copy 2024-01-31 142501).png", "Nextcloud", Kind.MASK),
        ("notes.sync-conflict-20240131-142501-ABCDEF1.pdf", "Syncthing", Kind.UNSUPPORTED),
    ],
)
def test_conflict_copies_are_classified_with_the_tool_and_what_they_would_be(
    name: str, tool: str, content_kind: Kind
) -> None:
    verdict = classify_name(name)
    assert verdict.kind is Kind.CONFLICT
    assert tool in verdict.reason
    assert verdict.conflict_kind is content_kind


def test_hidden_conflict_copy_is_still_ignored() -> None:
    assert classify_name(".syncthing.cat.sync-conflict-20240131-142501-ABCDEF1.png.tmp").kind is Kind.IGNORE


@pytest.mark.parametrize(
    ("relpath", "kind"),
    [
        ("prompt.txt", Kind.JOB),
        ("PROMPT.TXT", Kind.JOB),
        ("sub/dir/job.Toml", Kind.JOB),
        ("cat.png", Kind.IMAGE),
        ("cat.JPG", Kind.IMAGE),
        ("cat.jpeg", Kind.IMAGE),
        ("cat.webp", Kind.IMAGE),
        ("cat.mask.png", Kind.MASK),
        ("cat.MASK.PNG", Kind.MASK),
        ("cat.mask.webp", Kind.MASK),
        ("cat.mask.txt", Kind.JOB),
        ("my photo (1).png", Kind.IMAGE),
    ],
)
def test_accepted_types_are_classified_case_insensitively(relpath: str, kind: Kind) -> None:
    assert classify_name(relpath).kind is kind


@pytest.mark.parametrize("name", ["report.pdf", "table.csv", "README"])
def test_other_visible_files_are_unsupported_with_a_message_listing_accepted_types(name: str) -> None:
    verdict = classify_name(name)
    assert verdict.kind is Kind.UNSUPPORTED
    assert ".toml" in verdict.reason
    assert ".png" in verdict.reason
    assert "not accepted" in verdict.reason


@pytest.mark.parametrize(
    ("name", "advice"),
    [
        ("IMG_0042.MOV", "Live Photo"),
        ("logo.svg", "export it as PNG"),
        ("prompt.md", "in a .txt file"),
        ("prompts.zip", "unpack it into the inbox"),
    ],
)
def test_files_dropped_by_habit_are_unsupported_with_what_to_do_instead(name: str, advice: str) -> None:
    verdict = classify_name(name)
    assert verdict.kind is Kind.UNSUPPORTED
    assert "not accepted" in verdict.reason and advice in verdict.reason


def test_user_patterns_match_the_name_the_path_or_any_folder_case_insensitively() -> None:
    assert classify_name("drafts/cat.png", ["drafts"]).kind is Kind.IGNORE
    assert classify_name("cat.BAK.png", ["*.bak.png"]).kind is Kind.IGNORE
    assert classify_name("sub/temp_cat.png", ["temp_*"]).kind is Kind.IGNORE
    assert classify_name("sub/cat.png", ["sub/*.png"]).kind is Kind.IGNORE
    assert classify_name("sub/cat.png", ["other/*"]).kind is Kind.IMAGE
    assert "ignore_patterns" in classify_name("cat.png", ["cat.*"]).reason


def test_classify_dir_ignores_hidden_nas_and_user_folders_only() -> None:
    assert classify_dir("@eaDir") is not None
    assert classify_dir("a/.cache") is not None
    assert classify_dir("drafts", ["drafts"]) is not None
    assert classify_dir("portraits/2024") is None


def test_image_stem_of_a_mask_is_the_stem_of_its_image() -> None:
    assert image_stem("cat.mask.png") == "cat"
    assert image_stem("cat.png") == "cat"


@pytest.mark.parametrize(
    "name", ["IMG_0042.HEIC", "photo.heif", "render.avif", "scan.TIFF", "old.bmp", "meme.gif", "saved.jfif"]
)
def test_photos_from_phones_and_other_programs_are_images(name: str) -> None:
    assert classify_name(name).kind is Kind.IMAGE
    mask = name.replace(".", ".mask.", 1)
    assert classify_name(mask).kind is Kind.MASK
