from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.errors import ConfigError
from fooocusd.intake.layout import assert_folders_disjoint


def folders(root: Path) -> dict[str, Path]:
    return {name: root / name for name in ("inbox", "outbox", "state", "done", "failed")}


def test_separate_sibling_folders_are_accepted(tmp_path: Path) -> None:
    assert_folders_disjoint(**folders(tmp_path))


@pytest.mark.parametrize("label", ["outbox", "state", "done", "failed"])
def test_folder_inside_the_inbox_is_refused_naming_both_paths(tmp_path: Path, label: str) -> None:
    paths = folders(tmp_path)
    paths[label] = paths["inbox"] / "sub" / label
    with pytest.raises(ConfigError) as caught:
        assert_folders_disjoint(**paths)
    message = caught.value.explain()
    assert str(paths[label]) in message
    assert str(paths["inbox"]) in message
    assert f"paths.{label}" in message


def test_inbox_inside_another_folder_is_refused(tmp_path: Path) -> None:
    paths = folders(tmp_path)
    paths["inbox"] = paths["done"] / "inbox"
    with pytest.raises(ConfigError, match="inside the done folder"):
        assert_folders_disjoint(**paths)


def test_same_folder_twice_is_refused(tmp_path: Path) -> None:
    paths = folders(tmp_path)
    paths["outbox"] = paths["inbox"]
    with pytest.raises(ConfigError, match="same folder"):
        assert_folders_disjoint(**paths)


def test_symlinks_are_resolved_before_comparing(tmp_path: Path) -> None:
    paths = folders(tmp_path)
    paths["inbox"].mkdir()
    (paths["inbox"] / "out").mkdir()
    link = tmp_path / "outbox-link"
    link.symlink_to(paths["inbox"] / "out")
    paths["outbox"] = link
    with pytest.raises(ConfigError) as caught:
        assert_folders_disjoint(**paths)
    assert "really" in caught.value.message
