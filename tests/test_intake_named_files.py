"""Files a job file names by path (``image = "photos/cat.png"``) are claimed with that job file."""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import pytest

from fooocusd.intake.ignore import classify_name
from fooocusd.intake.pairing import Drop, Pairer
from fooocusd.intake.watcher import Ready
from fooocusd.journal.journal import Journal
from fooocusd.service.folders import prepare_folders
from fooocusd.service.reconcile import reconcile
from tests.daemon_harness import Sandbox
from tests.image_helpers import drawn_scene, write_tiny_esrgan

INBOX = Path("/inbox")


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    drawn_scene(size).save(buffer, format="PNG")
    return buffer.getvalue()


def _ready(name: str) -> Ready:
    return Ready(path=INBOX / name, relpath=name, kind=classify_name(name).kind, size=10, mtime_ns=1, inode=1)


def _names_by(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    return lambda job_file: [INBOX / name for name in table.get(job_file.name, [])]


def _named(drop: Drop) -> list[tuple[str, bool]]:
    return [(named.ready.relpath, named.shared) for named in drop.named]


def _relative(folder: Path, sandbox: Sandbox) -> list[str]:
    return [path.relative_to(folder).as_posix() for path in sandbox.files(folder)]


def _error_reports(sandbox: Sandbox) -> list[str]:
    return [path.read_text() for path in sandbox.files(sandbox.failed, "*.error.txt")]


# -- the pairer -----------------------------------------------------------------------------------


def test_named_image_is_never_released_alone_while_the_job_naming_it_waits() -> None:
    pairer = Pairer(pair_wait_seconds=5, named_by=_names_by({"job.toml": ["photos/cat.png", "mask.png"]}))
    pairer.offer([_ready("photos/cat.png"), _ready("job.toml")], now=0)
    disk = {INBOX / "photos/cat.png", INBOX / "job.toml"}
    # mask.png is not there yet: the job waits for it, and cat.png waits with the job, well past
    # the time a lone image would have been released as a vary job of its own.
    assert pairer.release(now=4, exists=disk.__contains__) == []
    pairer.offer([_ready("mask.png")], now=4.5)
    disk.add(INBOX / "mask.png")
    drops = pairer.release(now=4.5, exists=disk.__contains__)
    assert [(d.spec.relpath if d.spec else None, _named(d)) for d in drops] == [
        ("job.toml", [("mask.png", False), ("photos/cat.png", False)])
    ]
    assert pairer.held() == []


def test_named_file_arriving_later_than_its_job_file_is_waited_for() -> None:
    pairer = Pairer(pair_wait_seconds=5, named_by=_names_by({"job.toml": ["late.png"]}))
    pairer.offer([_ready("job.toml")], now=0)
    disk = {INBOX / "job.toml"}
    assert pairer.release(now=3, exists=disk.__contains__) == []
    disk.add(INBOX / "late.png")  # still arriving (not offered): waited for past pair_wait
    assert pairer.release(now=8, exists=disk.__contains__) == []
    pairer.offer([_ready("late.png")], now=9)
    (drop,) = pairer.release(now=9, exists=disk.__contains__)
    assert _named(drop) == [("late.png", False)]


def test_job_file_whose_named_file_never_comes_is_released_after_pair_wait() -> None:
    pairer = Pairer(pair_wait_seconds=5, named_by=_names_by({"job.toml": ["never.png"]}))
    pairer.offer([_ready("job.toml")], now=0)
    assert pairer.release(now=4.9, exists={INBOX / "job.toml"}.__contains__) == []
    (drop,) = pairer.release(now=5, exists={INBOX / "job.toml"}.__contains__)
    assert drop.spec is not None and drop.named == ()  # intake fails it, naming the file


def test_file_named_by_two_waiting_job_files_is_shared_until_the_last_takes_it() -> None:
    pairer = Pairer(pair_wait_seconds=5, named_by=_names_by({"a.toml": ["ref.png"], "b.toml": ["ref.png"]}))
    pairer.offer([_ready("ref.png"), _ready("b.toml"), _ready("a.toml")], now=0)
    disk = {INBOX / name for name in ("ref.png", "a.toml", "b.toml")}
    drops = pairer.release(now=0, exists=disk.__contains__)
    assert [(d.spec.relpath if d.spec else None, _named(d)) for d in drops] == [
        ("a.toml", [("ref.png", True)]),  # path order, so daemons sharing an inbox agree
        ("b.toml", [("ref.png", False)]),
    ]
    assert pairer.held() == []


# -- through the daemon ---------------------------------------------------------------------------
# Upscaling alone (a tiny super-resolution model) keeps these fast; the action does not matter here.
FAST = 'action = "upscale_fast_2x"\nupscale_model = "tiny-esrgan"\n'


def _with_upscaler(sandbox: Sandbox) -> Sandbox:
    write_tiny_esrgan(sandbox.root / "models" / "upscale_models" / "tiny-esrgan.safetensors")
    return sandbox


def test_named_image_is_claimed_with_its_job_and_ends_in_done_beside_it(sandbox: Sandbox) -> None:
    _with_upscaler(sandbox).drop("photos/cat.png", _png())
    sandbox.drop("job.toml", 'image = "photos/cat.png"\n' + FAST)
    summary = sandbox.drain()
    assert summary.ok, _error_reports(sandbox)
    (image,) = sandbox.images()  # one job: the named picture was not also varied on its own
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["image_action"]["source_image"] == "photos/cat.png"
    assert _relative(sandbox.done, sandbox) == ["cat.png", "job.toml"]
    assert _relative(sandbox.inbox, sandbox) == []


def test_missing_named_file_fails_the_job_file_naming_the_file(sandbox: Sandbox) -> None:
    sandbox.drop("job.toml", 'image = "gone.png"\naction = "vary_subtle"\n')
    summary = sandbox.drain()
    assert summary.inputs_failed == 1 and summary.queued_jobs == 0
    (report,) = _error_reports(sandbox)
    assert "the image 'gone.png' does not exist" in report
    assert _relative(sandbox.failed, sandbox) == ["job.toml", "job.toml.error.txt"]


def test_invalid_job_file_takes_the_image_it_names_to_failed_with_it(sandbox: Sandbox) -> None:
    sandbox.drop("ref.png", _png())
    sandbox.drop("job.toml", 'image = "ref.png"\nsteps = "many"\n')
    summary = sandbox.drain()
    assert summary.inputs_failed == 1 and summary.queued_jobs == 0  # ref.png was not varied alone
    assert _relative(sandbox.failed, sandbox) == ["job.toml", "job.toml.error.txt", "ref.png"]
    assert sandbox.images() == []


def test_two_job_files_naming_one_image_both_use_it_and_it_ends_in_done_once_each(
    sandbox: Sandbox,
) -> None:
    _with_upscaler(sandbox).drop("ref.png", _png())
    sandbox.drop("a.toml", 'image = "ref.png"\nname = "a"\n' + FAST)
    sandbox.drop("b.toml", 'image = "ref.png"\nname = "b"\n' + FAST)
    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 2, _error_reports(sandbox)
    sources = sorted(json.loads(p.read_text())["image_action"]["source_image"] for p in sandbox.sidecars())
    assert sources == ["ref.png", "ref.png"]
    # a.toml's claim held a copy, b.toml's took the file itself; each ends in done/ with its job.
    assert _relative(sandbox.done, sandbox) == ["a.toml", "b.toml", "ref-1.png", "ref.png"]
    assert _relative(sandbox.inbox, sandbox) == []


def test_crash_mid_claim_copies_a_shared_file_and_leaves_the_original_for_the_others(
    sandbox: Sandbox,
) -> None:
    folders = prepare_folders(sandbox.settings())
    ref = sandbox.drop("ref.png", _png())
    job = sandbox.drop("a.toml", 'image = "ref.png"\n')
    claim = folders.processing / "k1"
    claim.mkdir(parents=True)
    with Journal.open(folders.journal_db, owner="test") as journal:
        input_id = journal.begin_claim(
            key="k1",
            relpath="a.toml",
            sha256="0" * 64,
            size=1,
            files=[("spec", job, claim / "a.toml"), ("shared", ref, claim / "named" / "ref.png")],
            specs=[('{"image": "ref.png"}', 0)],
        )
        job.rename(claim / "a.toml")  # the crash came after the first file was moved
        reconcile(journal, folders)
        assert journal.get_input(input_id).state == "claimed"  # type: ignore[union-attr]
    assert (claim / "named" / "ref.png").read_bytes() == ref.read_bytes()
    assert ref.exists()  # the other job files naming it still find it in the inbox


def test_a_named_image_is_found_when_a_mac_spelled_its_name_apart(sandbox: Sandbox) -> None:
    # rsync from a Mac, or Finder on a Samba share, writes é as e + a combining accent; the
    # job file's name for it was typed as one character. Both print as café.png.
    from_a_mac, typed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    _with_upscaler(sandbox).drop(f"{from_a_mac}.png", _png())
    sandbox.drop("job.toml", f'image = "{typed}.png"\n' + FAST)
    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 1, _error_reports(sandbox)
    (image,) = sandbox.images()  # the picture was not also varied on its own
    sidecar = json.loads(image.with_suffix(".json").read_text())
    assert sidecar["image_action"]["source_image"] == f"{from_a_mac}.png"
    assert _relative(sandbox.done, sandbox) == [f"{from_a_mac}.png", "job.toml"]


def test_a_named_image_is_found_as_the_path_was_meant(sandbox: Sandbox) -> None:
    # Windows' separators, quotes kept in a .txt file, a name in other letter case.
    _with_upscaler(sandbox).drop("refs/Shed.png", _png())
    sandbox.drop("refs/Fox.png", _png())
    sandbox.drop("refs/owl.png", _png())
    fast = "action: upscale_fast_2x\nupscale model: tiny-esrgan\n"
    sandbox.drop("win.txt", "image: refs\\Shed.png\n" + fast)
    sandbox.drop("quoted.txt", 'image: "refs/Fox.png"\n' + fast)
    sandbox.drop("case.txt", "image: Refs/OWL.png\n" + fast)
    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 3, _error_reports(sandbox)
    sources = sorted(json.loads(p.read_text())["image_action"]["source_image"] for p in sandbox.sidecars())
    assert sources == ["refs/Fox.png", "refs/Shed.png", "refs/owl.png"]


def test_a_file_address_from_a_dragged_file_names_the_image(sandbox: Sandbox) -> None:
    _with_upscaler(sandbox).drop("refs/old barn.png", _png())
    address = (sandbox.inbox / "refs" / "old barn.png").as_uri()  # file:///…/refs/old%20barn.png
    sandbox.drop("job.txt", f"image: {address}\naction: upscale_fast_2x\nupscale model: tiny-esrgan\n")
    summary = sandbox.drain()
    assert summary.ok and summary.jobs_done == 1, _error_reports(sandbox)
    (sidecar,) = sandbox.sidecars()
    assert json.loads(sidecar.read_text())["image_action"]["source_image"] == "refs/old barn.png"


@pytest.mark.parametrize(
    ("written", "said"),
    [
        (
            "C:\\Users\\me\\Pictures\\barn.jpg",
            "is a path on a Windows computer, which fooocusd cannot reach",
        ),
        ("https://example.com/barn.jpg", "is a web address; fooocusd downloads nothing"),
    ],
)
def test_an_image_fooocusd_cannot_reach_is_refused_with_what_to_do_instead(
    sandbox: Sandbox, written: str, said: str
) -> None:
    sandbox.drop("job.txt", f"a barn\nimage: {written}\n")
    summary = sandbox.drain()
    assert summary.inputs_failed == 1
    (report,) = _error_reports(sandbox)
    assert f"the image '{written}' {said}" in report
    assert "into the inbox beside the job file" in report


@pytest.mark.parametrize(
    ("written", "said", "hint"),
    [
        ("refs/", "is a folder, not a picture", "name one picture in it, e.g. 'image: refs/cat.png'"),
        ("job.txt", "is this job file itself, not a picture", "name the picture to use"),
    ],
)
def test_a_job_that_names_no_picture_where_one_belongs_says_what_it_named(
    sandbox: Sandbox, written: str, said: str, hint: str
) -> None:
    sandbox.drop("refs/cat.png", _png())
    sandbox.drop("job.txt", f"a barn\nimage: {written}\n")
    summary = sandbox.drain()
    assert summary.inputs_failed == 1
    (report,) = _error_reports(sandbox)
    assert f"the image '{written}' {said}" in report and hint in report
