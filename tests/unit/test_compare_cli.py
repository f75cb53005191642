"""`tunebench compare | tag | note` and `ls --filter --sort`, on a real workspace store."""

from __future__ import annotations

import json

import pytest

from jobs.store import open_store
from tui.cli import main

PRESET = "name: {name}\nmethod:\n  name: {method}\ntraining:\n  lr: {lr}\n  epochs: 1\n"


@pytest.fixture
def runs(workspace):
    store = open_store(workspace)
    made = []
    for name, method, lr, loss in (("alpha", "lora", 1e-4, 0.9), ("beta", "full", 1e-3, 0.5), ("gamma", "lora", 1e-4, 0.7)):
        run = store.create_run("train", name, PRESET.format(name=name, method=method, lr=lr))
        store.add_metrics(run.id, [(s, "loss", loss + 1.0 / s, 100.0 + s) for s in range(1, 11)]
                          + [(10, "eval_loss", loss + 0.1, 111.0), (10, "tokens_seen", 5000.0, 111.0)])
        made.append(store.get_run(run.id))
    return made


def _out(workspace, capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-w", str(workspace.root), *args])
    return code, capsys.readouterr().out


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_compare_prints_only_the_settings_that_differ_and_the_figures(workspace, capsys, runs):
    code, out = _out(workspace, capsys, "compare", "alpha", "beta")
    assert code == 0
    text = _flat(out)
    assert "settings that differ" in text and "method.name lora full" in text and "training.lr 0.0001 0.001" in text
    assert "training.epochs" not in text  # the same in both
    assert "final / best (step)" in text and "eval_loss 1.0000 0.6000" in text
    assert "loss 1.0000 / 1.0000" not in text  # final equal to best: shown once


def test_compare_json_with_a_series(workspace, capsys, runs):
    code, out = _out(workspace, capsys, "compare", "alpha", "beta", "gamma", "--json", "--metric", "loss",
                     "--align", "tokens")
    data = json.loads(out)
    assert code == 0 and [r["name"] for r in data["runs"]] == ["alpha", "beta", "gamma"]
    assert {d["key"] for d in data["differences"]} == {"method.name", "training.lr"}
    assert data["figures"][runs[1].id]["eval_loss"] == {"final": 0.6, "best": 0.6, "best_step": 10}
    series = data["series"]["runs"][runs[0].id]
    assert series["rows"] == 10 and series["x"][-1] == 5000.0 and len(series["y"]) == 10


def test_compare_refuses_one_run_with_a_clear_message(workspace, capsys, runs):
    code = main(["-w", str(workspace.root), "compare", "alpha"])
    err = capsys.readouterr().err
    assert code != 0 and "compare takes 2 to 6" in err and "Traceback" not in err


def test_tag_and_note_show_in_ls_and_filter_it(workspace, capsys, runs):
    assert _out(workspace, capsys, "tag", "alpha", "baseline", "v1")[0] == 0
    assert _out(workspace, capsys, "tag", "beta", "v1")[0] == 0
    code, out = _out(workspace, capsys, "note", "alpha", "the", "first", "[try]")
    assert code == 0 and "the first [try]" in out
    assert _out(workspace, capsys, "tag", "alpha")[1].strip() == "alpha: baseline v1"
    assert json.loads(_out(workspace, capsys, "tag", "beta", "v1", "--remove", "--json")[1])["tags"] == []

    code, out = _out(workspace, capsys, "ls")
    assert "#baseline #v1 the first [try]" in _flat(out)
    code, out = _out(workspace, capsys, "ls", "--filter", "#baseline")
    assert "alpha" in out and "beta" not in out and "gamma" not in out
    code, out = _out(workspace, capsys, "ls", "--filter", "method:lora", "--json")
    assert [r["name"] for r in json.loads(out)["runs"]] == ["gamma", "alpha"]
    assert json.loads(out)["runs"][1]["tags"] == ["baseline", "v1"]
    code, out = _out(workspace, capsys, "ls", "--sort", "loss", "--json")
    assert [r["name"] for r in json.loads(out)["runs"]] == ["beta", "gamma", "alpha"]
    code, out = _out(workspace, capsys, "ls", "--filter", "state:running")
    assert "no runs match the filter" in out
    assert _out(workspace, capsys, "note", "alpha", "--clear")[0] == 0
    assert open_store(workspace).resolve_run("alpha").note == ""


def test_bad_tag_and_filter_are_explained(workspace, capsys, runs):
    code = main(["-w", str(workspace.root), "tag", "alpha", "two,words"])
    err = capsys.readouterr().err
    assert code != 0 and "is not a tag" in err and "Traceback" not in err
    code = main(["-w", str(workspace.root), "ls", "--filter", "colour:red"])
    err = capsys.readouterr().err
    assert code != 0 and "not a field to filter on" in err and "state:running" in err
