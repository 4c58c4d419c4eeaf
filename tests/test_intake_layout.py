from __future__ import annotations

from pathlib import Path

import pytest

from fooocusd.errors import ConfigError
from fooocusd.intake.layout import assert_folders_disjoint, check_folder_layout
from fooocusd.settings import Settings
from tests.daemon_harness import Sandbox


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


@pytest.mark.parametrize("label", ["models", "presets", "styles", "wildcards"])
def test_a_folder_fooocusd_reads_from_inside_the_inbox_is_refused(tmp_path: Path, label: str) -> None:
    # Its files would be taken as drops: wildcard lists run as prompts, models moved to failed/.
    inbox = tmp_path / "inbox"
    settings = Settings(paths={"inbox": inbox, label: inbox / "mine" / label})
    with pytest.raises(ConfigError) as caught:
        check_folder_layout(settings)
    assert (
        f"the {label} folder {inbox / 'mine' / label} lies inside the inbox {inbox}" in caught.value.message
    )
    assert "intake.ignore_patterns" in (caught.value.hint or "")


def test_a_read_folder_inside_the_inbox_is_accepted_where_the_intake_ignores_it(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    check_folder_layout(Settings(paths={"inbox": inbox, "wildcards": inbox / ".wildcards"}))
    check_folder_layout(
        Settings(
            paths={"inbox": inbox, "presets": inbox / "my-presets"}, intake={"ignore_patterns": ["my-*"]}
        )
    )
    with pytest.raises(ConfigError):
        check_folder_layout(Settings(paths={"inbox": inbox, "models": [tmp_path / "models", inbox]}))
    # The default wildcards folder sits beside the inbox, like done/ and failed/.
    check_folder_layout(Settings(paths={"inbox": inbox}))


def test_the_daemon_does_not_start_with_its_wildcards_inside_the_inbox(sandbox: Sandbox) -> None:
    sandbox.write_config()
    text = sandbox.config.read_text()
    sandbox.config.write_text(
        text.replace("[intake]", f'wildcards = "{sandbox.inbox / "lists"}"\n\n[intake]', 1)
    )
    (sandbox.inbox / "lists").mkdir(parents=True)
    (sandbox.inbox / "lists" / "color.txt").write_text("red\n", encoding="utf-8")
    result = sandbox.once()
    assert result.returncode != 0
    assert "the wildcards folder" in " ".join(result.stderr.split())
    assert (sandbox.inbox / "lists" / "color.txt").read_text(encoding="utf-8") == "red\n"
