"""``models fetch``: downloads through huggingface_hub from a local server that answers like the hub."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants
from huggingface_hub.utils import _http as hub_http

from fooocusd.engine.fetch import (
    CATALOGUE_FILE,
    CatalogueEntry,
    CatalogueError,
    FetchError,
    FetchNetworkError,
    fetch,
    load_catalogue,
    lookup,
)
from fooocusd.engine.ip_adapter.files import FACE_DETECTOR_FILE
from fooocusd.engine.model_dirs import ModelDirs
from fooocusd.settings import ControlNetSettings

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAYLOAD = bytes(range(256)) * 400  # 100 KiB


@dataclass
class FakeHub:
    """Files by URL path; what the hub's resolve endpoint would answer (LFS headers included)."""

    files: dict[str, bytes] = field(default_factory=dict)
    advertised_sha256: dict[str, str] = field(default_factory=dict)
    in_git: set[str] = field(default_factory=set)  # small files the hub keeps in git, not LFS
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range header
    url: str = ""

    def add(self, repo: str, file: str, content: bytes, advertised: str | None = None) -> None:
        path = f"/{repo}/resolve/main/{file}"
        self.files[path] = content
        self.advertised_sha256[path] = advertised or hashlib.sha256(content).hexdigest()

    def add_in_git(self, repo: str, file: str, content: bytes, advertised: str | None = None) -> None:
        """A small file kept in git: the hub sends its git blob id as the ETag, and no LFS headers."""
        path = f"/{repo}/resolve/main/{file}"
        self.files[path] = content
        self.in_git.add(path)
        blob = hashlib.sha1(f"blob {len(content)}\0".encode() + content, usedforsecurity=False)
        self.advertised_sha256[path] = advertised or blob.hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range", "")))
            content = hub.files.get(self.path)
            if content is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                start = int(match.group(1))
            chunk = content[start:]
            self.send_response(206 if start else 200)
            sha256 = hub.advertised_sha256[self.path]
            self.send_header("X-Repo-Commit", COMMIT)
            if self.path not in hub.in_git:
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(len(content)))
            self.send_header("ETag", f'"{sha256}"')
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if body:
                self.wfile.write(chunk)

    return Handler


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest switches the hub off for all tests
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def _entry(**overrides: object) -> CatalogueEntry:
    values: dict[str, object] = {
        "name": "tiny_lora",
        "kind": "loras",
        "repo": "someone/misc",
        "file": "fav/tiny_lora.safetensors",
    }
    values.update(overrides)
    return CatalogueEntry(**values)  # type: ignore[arg-type]


def test_fetch_downloads_into_the_kind_folder_of_the_first_root_and_verifies_it(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add("someone/misc", "fav/tiny_lora.safetensors", PAYLOAD)
    first, second = tmp_path / "mine", tmp_path / "other"
    result = fetch(_entry(), ModelDirs.of([first, second]))
    assert result.path == first / "loras" / "tiny_lora.safetensors"
    assert result.path.read_bytes() == PAYLOAD
    assert result.sha256 == hashlib.sha256(PAYLOAD).hexdigest() and result.downloaded
    assert [path.name for path in result.path.parent.iterdir()] == ["tiny_lora.safetensors"]  # no leftovers
    assert not second.exists()


def test_a_generic_repository_file_name_is_saved_under_the_entrys_own_name(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add("someone/encoder", "models/image_encoder/model.safetensors", PAYLOAD)
    entry = _entry(
        kind="clip_vision",
        repo="someone/encoder",
        file="models/image_encoder/model.safetensors",
        save_as="clip_vision_vit_h.safetensors",
    )
    result = fetch(entry, ModelDirs.of(tmp_path))
    assert result.path == tmp_path / "clip_vision" / "clip_vision_vit_h.safetensors"
    assert result.path.read_bytes() == PAYLOAD


def test_fetch_resumes_a_partial_download_with_a_range_request(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("someone/misc", "fav/tiny_lora.safetensors", PAYLOAD)
    partial = tmp_path / "loras" / ".tiny_lora.safetensors.part"
    partial.parent.mkdir(parents=True)
    half = len(PAYLOAD) // 2
    partial.write_bytes(PAYLOAD[:half])  # what an interrupted earlier run leaves behind
    result = fetch(_entry(), ModelDirs.of(tmp_path))
    assert result.resumed_from == half
    assert ("GET", "/someone/misc/resolve/main/fav/tiny_lora.safetensors", f"bytes={half}-") in hub.requests
    assert result.path.read_bytes() == PAYLOAD and not partial.exists()


def test_checksum_mismatch_deletes_the_download_and_leaves_nothing_in_place(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add("someone/misc", "fav/tiny_lora.safetensors", PAYLOAD, advertised="ab" * 32)
    with pytest.raises(FetchError) as caught:
        fetch(_entry(), ModelDirs.of(tmp_path))
    assert "failed verification" in caught.value.message and "deleted" in caught.value.message
    assert list((tmp_path / "loras").iterdir()) == []


def test_a_catalogue_hash_that_differs_from_the_hub_refuses_before_downloading(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add("someone/misc", "fav/tiny_lora.safetensors", PAYLOAD)
    with pytest.raises(FetchError, match="different"):
        fetch(_entry(sha256="cd" * 32), ModelDirs.of(tmp_path))
    assert all(method == "HEAD" for method, _path, _range in hub.requests)


def test_missing_upstream_file_says_404_and_names_the_repository(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as caught:
        fetch(_entry(), ModelDirs.of(tmp_path))
    assert "404" in caught.value.message and "someone/misc/fav/tiny_lora.safetensors" in caught.value.message
    assert caught.value.where.startswith(hub.url)  # HF_ENDPOINT was honoured


def test_an_unreachable_hub_is_a_retryable_network_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_http.time, "sleep", lambda _seconds: None)  # skip the retries' back-off
    with pytest.raises(FetchNetworkError) as caught:
        fetch(_entry(), ModelDirs.of(tmp_path))
    assert "network" in caught.value.hint


def test_offline_mode_is_respected_with_a_clear_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FetchError, match="HF_HUB_OFFLINE"):
        fetch(_entry(), ModelDirs.of(tmp_path))


def test_an_existing_file_is_kept_unless_forced(hub: FakeHub, tmp_path: Path) -> None:
    hub.add("someone/misc", "fav/tiny_lora.safetensors", PAYLOAD)
    existing = tmp_path / "loras" / "tiny_lora.safetensors"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"mine")
    assert not fetch(_entry(), ModelDirs.of(tmp_path)).downloaded
    assert existing.read_bytes() == b"mine" and hub.requests == []
    assert fetch(_entry(), ModelDirs.of(tmp_path), force=True).downloaded
    assert existing.read_bytes() == PAYLOAD


def test_not_enough_disk_space_is_refused_before_downloading(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add("someone/misc", "fav/tiny_lora.safetensors", PAYLOAD)
    monkeypatch.setattr(
        "fooocusd.engine.fetch.shutil.disk_usage", lambda _path: type("U", (), {"free": 1000})()
    )
    with pytest.raises(FetchError, match="not enough disk space"):
        fetch(_entry(), ModelDirs.of(tmp_path))
    assert not any(method == "GET" for method, _path, _range in hub.requests)


DEPTH_REPO = "someone/depth-small-hf"
CONFIG = b'{"model_type": "depth_anything"}\n'


def _folder_entry() -> CatalogueEntry:
    return _entry(
        name="depth-small",
        kind="depth_estimator",
        repo=DEPTH_REPO,
        file="",
        files=("config.json", "model.safetensors"),
    )


def test_a_folder_entry_lands_as_one_folder_with_every_file_verified(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_in_git(DEPTH_REPO, "config.json", CONFIG)
    hub.add(DEPTH_REPO, "model.safetensors", PAYLOAD)
    said: list[str] = []

    result = fetch(_folder_entry(), ModelDirs.of(tmp_path), say=said.append)

    assert result.path == tmp_path / "depth_estimator" / "depth-small" and result.downloaded
    assert (result.path / "config.json").read_bytes() == CONFIG
    assert (result.path / "model.safetensors").read_bytes() == PAYLOAD
    assert result.size == len(CONFIG) + len(PAYLOAD)
    assert [p.name for p in (tmp_path / "depth_estimator").iterdir()] == ["depth-small"]  # no staging left
    assert sorted(p.name for p in result.path.iterdir()) == ["config.json", "model.safetensors"]
    assert any(str(result.path / "model.safetensors") in line for line in said)
    again = fetch(_folder_entry(), ModelDirs.of(tmp_path))
    assert not again.downloaded and again.size == result.size


def test_a_file_kept_in_git_that_does_not_match_its_blob_id_fails_and_no_folder_appears(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_in_git(DEPTH_REPO, "config.json", CONFIG, advertised="0" * 40)
    hub.add(DEPTH_REPO, "model.safetensors", PAYLOAD)
    with pytest.raises(FetchError, match=r"config\.json failed verification"):
        fetch(_folder_entry(), ModelDirs.of(tmp_path))
    assert not (tmp_path / "depth_estimator" / "depth-small").exists()


def test_an_interrupted_folder_fetch_keeps_the_files_it_finished_and_resumes(
    hub: FakeHub, tmp_path: Path
) -> None:
    hub.add_in_git(DEPTH_REPO, "config.json", CONFIG)
    hub.add(DEPTH_REPO, "model.safetensors", PAYLOAD)
    staging = tmp_path / "depth_estimator" / ".depth-small.part"
    staging.mkdir(parents=True)
    (staging / "config.json").write_bytes(CONFIG)  # verified by the run that stopped
    half = len(PAYLOAD) // 2
    (staging / ".model.safetensors.part").write_bytes(PAYLOAD[:half])

    result = fetch(_folder_entry(), ModelDirs.of(tmp_path))

    assert result.resumed_from == half
    assert not any("config.json" in path for _method, path, _range in hub.requests)
    assert (result.path / "model.safetensors").read_bytes() == PAYLOAD


def test_force_replaces_a_folder_only_once_the_new_one_is_complete(hub: FakeHub, tmp_path: Path) -> None:
    old = tmp_path / "depth_estimator" / "depth-small"
    old.mkdir(parents=True)
    (old / "stale.bin").write_bytes(b"old")
    hub.add_in_git(DEPTH_REPO, "config.json", CONFIG)
    with pytest.raises(FetchError, match="HTTP 404"):  # model.safetensors is missing upstream
        fetch(_folder_entry(), ModelDirs.of(tmp_path), force=True)
    assert (old / "stale.bin").exists()

    hub.add(DEPTH_REPO, "model.safetensors", PAYLOAD)
    fetch(_folder_entry(), ModelDirs.of(tmp_path), force=True)
    assert sorted(p.name for p in old.iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize(
    "extra",
    [
        'file = "a.safetensors"\nfiles = ["b.json"]',
        "",
        'files = ["../escape.json"]',
        'files = ["x"]\nsha256 = "' + "a" * 64 + '"',
    ],
    ids=["both", "neither", "escaping", "pinned-folder"],
)
def test_a_catalogue_entry_must_be_either_one_file_or_a_folder_of_files_inside_its_repository(
    tmp_path: Path, extra: str
) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(f'[[model]]\nname = "x"\nkind = "loras"\nrepo = "a/b"\n{extra}\n')
    with pytest.raises(CatalogueError, match="broken entry"):
        load_catalogue(catalogue)


def test_bundled_catalogue_names_every_preset_and_image_prompt_file_and_pins_nothing_unverified() -> None:
    catalogue = load_catalogue(CATALOGUE_FILE)
    expected = {
        "juggernautXL_v8Rundiffusion": "checkpoints",
        "realisticStockPhoto_v20": "checkpoints",
        "animaPencilXL_v500": "checkpoints",
        "ponyDiffusionV6XL": "checkpoints",
        "ponyDiffusionV6XL_vae": "vae",
        "sd_xl_base_1.0_0.9vae": "checkpoints",
        "sd_xl_refiner_1.0_0.9vae": "checkpoints",
        "sd_xl_offset_example-lora_1.0": "loras",
        "SDXL_FILM_PHOTOGRAPHY_STYLE_V1": "loras",
        "sdxl_lcm_lora": "loras",
        "sdxl_lightning_4step_lora": "loras",
        "sdxl_hyper_sd_4step_lora": "loras",
        "ip-adapter-plus_sdxl_vit-h": "ipadapter",
        "ip-adapter-plus-face_sdxl_vit-h": "ipadapter",
        "clip_vision_vit_h": "clip_vision",
        "controlnet-canny-sdxl-1.0": "controlnet",
        "controlnet-depth-sdxl-1.0": "controlnet",
        "RealESRGAN_x4plus": "upscale_models",
        "Depth-Anything-V2-Small-hf": "depth_estimator",
        "face_detection_yunet_2023mar": "face_detection",
    }
    assert {name: entry.kind for name, entry in catalogue.items()} == expected
    for entry in catalogue.values():
        suffix = ".onnx" if entry.kind == "face_detection" else ".safetensors"
        assert entry.file_name == (entry.name if entry.files else f"{entry.name}{suffix}")
        assert entry.sha256 == "" or len(entry.sha256) == 64
    depth = catalogue["Depth-Anything-V2-Small-hf"]
    assert depth.name == ControlNetSettings().depth_estimator  # the default setting can be fetched
    assert set(depth.files) == {"config.json", "preprocessor_config.json", "model.safetensors"}
    # The face detector the engine looks for can be fetched, named by its entry or by its file.
    assert lookup(FACE_DETECTOR_FILE, catalogue).name == "face_detection_yunet_2023mar"


def test_lookup_ignores_case_and_suffix_and_lists_the_catalogue_when_unknown() -> None:
    catalogue = load_catalogue()
    assert lookup("SDXL_LCM_LORA.safetensors", catalogue).name == "sdxl_lcm_lora"
    with pytest.raises(CatalogueError) as caught:
        lookup("nope", catalogue)
    assert "juggernautXL_v8Rundiffusion" in caught.value.hint
    assert "did you mean" not in caught.value.message


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("realesrgan", "RealESRGAN_x4plus"),
        ("sdxl_lcm", "sdxl_lcm_lora"),
        ("Juggernaut", "juggernautXL_v8Rundiffusion"),
    ],
)
def test_lookup_of_a_near_name_says_which_entry_was_meant(typed: str, meant: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        lookup(typed, load_catalogue())
    assert f"did you mean '{meant}'" in caught.value.message
