"""Deleting and renaming workspace presets (issue 15): `tunebench presets rm` and `mv`, in-process,
and the presets/loader.py functions the CLI and the TUI both call. Built-ins are refused."""

from __future__ import annotations

import pytest
import yaml

from presets import PresetError, builtin_names, delete_user_preset, rename_user_preset, save_user_preset
from presets.loader import builtin_dir, user_dir


def demo_copy(workspace, name: str) -> str:
    text = "# my notes\n" + (builtin_dir() / "demo.yaml").read_text().replace("name: demo", f"name: {name}", 1)
    save_user_preset(workspace.root, name, text)
    return text


def test_rm_deletes_a_workspace_preset_with_yes(cli, workspace):
    demo_copy(workspace, "mine")
    code, out = cli("presets", "rm", "mine", "--yes")
    assert code == 0 and "deleted" in out
    assert not (user_dir(workspace.root) / "mine.yaml").exists()


def test_rm_without_yes_off_a_terminal_asks_for_it_and_keeps_the_file(cli, workspace, monkeypatch):
    demo_copy(workspace, "mine")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, out = cli("presets", "rm", "mine")
    assert code != 0 and "pass --yes" in out
    assert (user_dir(workspace.root) / "mine.yaml").exists()


def test_rm_answer_no_keeps_the_file(cli, workspace, monkeypatch):
    demo_copy(workspace, "mine")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, out = cli("presets", "rm", "mine")
    assert code == 1 and "nothing deleted" in out
    assert (user_dir(workspace.root) / "mine.yaml").exists()


def test_rm_refuses_a_builtin_and_an_unknown_name(cli, workspace):
    code, out = cli("presets", "rm", "demo", "--yes")
    assert code != 0 and "built-in" in out and "cannot be deleted" in out
    assert (builtin_dir() / "demo.yaml").exists()
    demo_copy(workspace, "mine")
    code, out = cli("presets", "rm", "mien", "--yes")
    assert code != 0 and "no workspace preset named 'mien'" in out and "did you mean mine" in out
    code, out = cli("presets", "rm", "../mine", "--yes")
    assert code != 0 and "path separator" in out
    assert (user_dir(workspace.root) / "mine.yaml").exists()


def test_mv_renames_the_file_and_the_name_inside_keeping_comments(cli, workspace):
    text = demo_copy(workspace, "mine")
    code, out = cli("presets", "mv", "mine", "yours")
    assert code == 0 and "renamed mine to yours" in out
    folder = user_dir(workspace.root)
    assert not (folder / "mine.yaml").exists()
    renamed = (folder / "yours.yaml").read_text()
    assert renamed == text.replace("name: mine", "name: yours", 1)
    assert renamed.startswith("# my notes\n") and yaml.safe_load(renamed)["name"] == "yours"
    assert sorted(p.name for p in folder.iterdir()) == ["yours.yaml"], "no temporary file left behind"


def test_mv_refuses_builtins_taken_names_and_bad_names(cli, workspace):
    first = demo_copy(workspace, "first")
    second = demo_copy(workspace, "second")
    folder = user_dir(workspace.root)
    code, out = cli("presets", "mv", "demo", "mine")
    assert code != 0 and "built-in" in out and "cannot be renamed" in out
    code, out = cli("presets", "mv", "first", "second")
    assert code != 0 and "exists already" in out
    code, out = cli("presets", "mv", "first", builtin_names()[0])
    assert code != 0 and "built-in preset's name" in out
    code, out = cli("presets", "mv", "first", "bad/name")
    assert code != 0 and "path separator" in out
    code, out = cli("presets", "mv", "first", ".hidden")
    assert code != 0 and "starts with a dot" in out
    assert (folder / "first.yaml").read_text() == first and (folder / "second.yaml").read_text() == second
    assert sorted(p.name for p in folder.iterdir()) == ["first.yaml", "second.yaml"]


def test_loader_functions_refuse_with_preset_errors(workspace):
    with pytest.raises(PresetError, match="built-in"):
        delete_user_preset(workspace.root, "demo")
    with pytest.raises(PresetError, match="no workspace preset"):
        rename_user_preset(workspace.root, "nothing", "other")
    demo_copy(workspace, "mine")
    with pytest.raises(PresetError, match="the old name"):
        rename_user_preset(workspace.root, "mine", "mine")
    path = rename_user_preset(workspace.root, "mine", "other")
    assert path == user_dir(workspace.root) / "other.yaml" and path.is_file()
    assert delete_user_preset(workspace.root, "other") == path and not path.exists()


def test_a_broken_preset_can_still_be_renamed_and_deleted(workspace):
    folder = user_dir(workspace.root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "broken.yaml").write_text("name: broken\ntraining: [unclosed\n")
    rename_user_preset(workspace.root, "broken", "fixme")
    assert (folder / "fixme.yaml").read_text() == "name: broken\ntraining: [unclosed\n", "unparsable text stays"
    delete_user_preset(workspace.root, "fixme")
    assert not (folder / "fixme.yaml").exists()
