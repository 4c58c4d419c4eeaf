from __future__ import annotations

import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest

from fooocusd.intake.ignore import Kind, classify_name
from fooocusd.intake.pairing import Drop, Pairer
from fooocusd.intake.watcher import Ready

INBOX = Path("/inbox")


class Disk:
    """Which files exist, for the pairer's ``exists`` callback."""

    def __init__(self, *names: str) -> None:
        self.paths = {INBOX / name for name in names}

    def __call__(self, path: Path) -> bool:
        return path in self.paths

    def add(self, *names: str) -> None:
        self.paths.update(INBOX / name for name in names)


def ready(name: str) -> Ready:
    kind = classify_name(name).kind
    return Ready(path=INBOX / name, relpath=name, kind=kind, size=10, mtime_ns=1, inode=hash(name) % 10_000)


def names(drop: Drop) -> tuple[str | None, str | None, str | None]:
    spec, image, mask = (part.path.name if part else None for part in (drop.spec, drop.image, drop.mask))
    return spec, image, mask


def test_spec_without_image_is_released_at_once() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([ready("a.toml")], now=0)
    assert [names(d) for d in pairer.release(now=0, exists=Disk("a.toml"))] == [("a.toml", None, None)]


def test_image_and_same_stem_spec_ready_together_are_one_drop_with_its_mask() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([ready("cat.png"), ready("cat.txt"), ready("cat.mask.png")], now=0)
    drops = pairer.release(now=0, exists=Disk("cat.png", "cat.txt", "cat.mask.png"))
    assert [names(d) for d in drops] == [("cat.txt", "cat.png", "cat.mask.png")]
    assert pairer.held() == []


def test_ready_image_is_held_while_its_spec_is_still_arriving() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.png", "cat.toml")
    pairer.offer([ready("cat.png")], now=0)
    assert pairer.release(now=50, exists=disk) == []  # held past pair_wait: the spec is on disk
    pairer.offer([ready("cat.toml")], now=51)
    assert [names(d) for d in pairer.release(now=51, exists=disk)] == [("cat.toml", "cat.png", None)]


def test_ready_spec_is_held_while_its_image_is_still_arriving() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.toml", "cat.JPG")
    pairer.offer([ready("cat.toml")], now=0)
    assert pairer.release(now=30, exists=disk) == []
    pairer.offer([ready("cat.JPG")], now=31)
    assert [names(d) for d in pairer.release(now=31, exists=disk)] == [("cat.toml", "cat.JPG", None)]


def test_lone_image_waits_pair_wait_then_is_released_alone() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.png")
    pairer.offer([ready("cat.png")], now=0)
    assert pairer.release(now=9.9, exists=disk) == []
    assert pairer.next_deadline(now=9.9) == pytest.approx(10)
    assert [names(d) for d in pairer.release(now=10, exists=disk)] == [(None, "cat.png", None)]


def test_spec_arriving_during_the_image_wait_is_paired() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.png")
    pairer.offer([ready("cat.png")], now=0)
    assert pairer.release(now=5, exists=disk) == []
    disk.add("cat.toml")
    pairer.offer([ready("cat.toml")], now=6)
    assert [names(d) for d in pairer.release(now=6, exists=disk)] == [("cat.toml", "cat.png", None)]


def test_drop_waits_for_a_mask_that_is_still_arriving() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.png", "cat.toml", "cat.mask.png")
    pairer.offer([ready("cat.png"), ready("cat.toml")], now=0)
    assert pairer.release(now=1, exists=disk) == []
    pairer.offer([ready("cat.mask.png")], now=2)
    assert [names(d) for d in pairer.release(now=2, exists=disk)] == [("cat.toml", "cat.png", "cat.mask.png")]


def test_mask_is_never_a_job_of_its_own_and_goes_with_its_image() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.mask.png", "cat.png")
    pairer.offer([ready("cat.mask.png")], now=0)
    assert pairer.release(now=100, exists=disk) == []  # image still arriving
    pairer.offer([ready("cat.png")], now=100)
    assert pairer.release(now=105, exists=disk) == []  # image alone waits pair_wait
    assert [names(d) for d in pairer.release(now=110, exists=disk)] == [(None, "cat.png", "cat.mask.png")]


def test_mask_whose_image_never_arrives_is_released_as_an_orphan() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([ready("cat.mask.png")], now=0)
    drops = pairer.release(now=10, exists=Disk("cat.mask.png"))
    assert [names(d) for d in drops] == [(None, None, "cat.mask.png")]
    assert drops[0].is_orphan_mask


def test_files_pair_only_within_the_same_folder() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([ready("a/cat.toml"), ready("b/cat.png")], now=0)
    disk = Disk("a/cat.toml", "b/cat.png")
    assert [names(d) for d in pairer.release(now=0, exists=disk)] == [("cat.toml", None, None)]
    assert [names(d) for d in pairer.release(now=10, exists=disk)] == [(None, "cat.png", None)]


def test_waiting_for_a_partner_that_never_completes_ends_after_the_partner_timeout() -> None:
    pairer = Pairer(pair_wait_seconds=10, partner_timeout_seconds=600)
    disk = Disk("cat.toml", "cat.png")  # cat.png is a placeholder that never fills
    pairer.offer([ready("cat.toml")], now=0)
    assert pairer.release(now=599, exists=disk) == []
    assert [names(d) for d in pairer.release(now=600, exists=disk)] == [("cat.toml", None, None)]


def test_second_image_with_the_same_stem_is_not_held_for_an_already_paired_spec() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    disk = Disk("cat.toml", "cat.png", "cat.webp")
    pairer.offer([ready("cat.toml"), ready("cat.png"), ready("cat.webp")], now=0)
    assert [names(d) for d in pairer.release(now=0, exists=disk)] == [("cat.toml", "cat.png", None)]
    assert [names(d) for d in pairer.release(now=10, exists=disk)] == [(None, "cat.webp", None)]


def test_offering_unsupported_or_refused_files_is_an_error() -> None:
    pairer = Pairer()
    with pytest.raises(ValueError, match=r"report\.pdf"):
        pairer.offer([ready("report.pdf")])
    assert ready("report.pdf").kind is Kind.UNSUPPORTED


def test_conflict_copy_the_caller_chose_to_process_pairs_as_what_it_is_a_copy_of() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    name = "cat.sync-conflict-20240131-142501-ABCDEF1.toml"
    verdict = classify_name(name)
    assert verdict.kind is Kind.CONFLICT
    conflict = replace(ready(name), conflict_kind=verdict.conflict_kind)
    pairer.offer([conflict], now=0)
    assert [names(d) for d in pairer.release(now=0, exists=Disk(name))] == [(name, None, None)]


def test_holding_counts_files_not_released_yet() -> None:
    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([ready("a.png"), ready("b.png")], now=0)
    assert pairer.holding() == 2
    assert {r.relpath for r in pairer.held()} == {"a.png", "b.png"}
    pairer.release(now=10, exists=Disk("a.png", "b.png"))
    assert pairer.holding() == 0


def test_default_disk_check_sees_real_partner_files_but_not_links_or_folders(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(b"png")
    (tmp_path / "cat.toml").write_text('prompt = "cat"')  # still settling: not offered yet
    (tmp_path / "dog.png").write_bytes(b"png")
    (tmp_path / "dog.toml").symlink_to(tmp_path / "cat.toml")
    (tmp_path / "owl.png").write_bytes(b"png")
    (tmp_path / "owl.txt").mkdir()

    def on_disk(name: str) -> Ready:
        return Ready(path=tmp_path / name, relpath=name, kind=Kind.IMAGE, size=3, mtime_ns=1, inode=1)

    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([on_disk("cat.png"), on_disk("dog.png"), on_disk("owl.png")], now=0)
    released = pairer.release(now=10)
    assert sorted(d.image.relpath for d in released if d.image) == ["dog.png", "owl.png"]
    assert [r.relpath for r in pairer.held()] == ["cat.png"]
    (tmp_path / "cat.toml").unlink()
    assert [d.image.relpath for d in pairer.release(now=10) if d.image] == ["cat.png"]


def test_a_job_file_with_two_same_named_pictures_says_which_one_it_took(logged: list[str]) -> None:
    pairer = Pairer(pair_wait_seconds=10)
    files = ("IMG_0042.HEIC", "IMG_0042.JPG", "IMG_0042.txt")
    pairer.offer([ready(name) for name in files], now=0)

    drops = pairer.release(now=20, exists=Disk(*files))

    assert [names(d) for d in drops] == [
        ("IMG_0042.txt", "IMG_0042.HEIC", None),
        (None, "IMG_0042.JPG", None),
    ]
    [said] = [line for line in logged if "pairs with" in line]
    assert said.startswith(
        "IMG_0042.txt pairs with IMG_0042.HEIC; IMG_0042.JPG (the same name) runs as a job"
    )
    assert said.rstrip().endswith("(image: IMG_0042.JPG)")


def test_a_job_file_pairs_with_its_picture_whatever_name_spelling_each_name_has(tmp_path: Path) -> None:
    typed, from_a_mac = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    (tmp_path / f"{from_a_mac}.txt").write_text("a bowl")
    (tmp_path / f"{typed}.png").write_bytes(b"png")

    def on_disk(name: str) -> Ready:
        kind = classify_name(name).kind
        return Ready(path=tmp_path / name, relpath=name, kind=kind, size=3, mtime_ns=1, inode=1)

    pairer = Pairer(pair_wait_seconds=10)
    pairer.offer([on_disk(f"{from_a_mac}.txt")], now=0)
    assert pairer.release(now=1) == []  # its picture is on disk, still settling: the job waits
    pairer.offer([on_disk(f"{typed}.png")], now=2)
    assert [names(d) for d in pairer.release(now=2)] == [(f"{from_a_mac}.txt", f"{typed}.png", None)]
