"""`tunebench show RUN` reads the store only: sizes in the units the TUI uses."""

from __future__ import annotations

from tui import format as fmt
from tui.cli import main


def test_show_gives_checkpoint_sizes_in_the_tuis_units(workspace, tmp_path, capsys):
    from jobs.store import open_store

    store = open_store(workspace)
    run = store.create_run("train", "sized", "kind: train\n")
    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    store.add_checkpoint(run.id, 10, str(folder), {"eval_loss": 1.25}, 3_400_000)
    assert main(["-w", str(workspace.root), "show", run.id]) == 0
    out = capsys.readouterr().out
    assert fmt.size(3_400_000) in out and "3.2 MiB" in out
    assert " MB" not in out
