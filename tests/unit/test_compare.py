"""Comparing runs (jobs/compare.py) and the tags and notes runs carry (jobs/store.py), on real stores."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from jobs import compare as cmp
from jobs import store as store_mod
from jobs.rebuild import rebuild_store
from jobs.store import BadTag, Store, open_store

PRESET = """\
name: {name}
model:
  path: /models/tiny
training:
  lr: {lr}
  epochs: 2
  batch_size: 4
method:
  name: lora
"""


def _run(store, name, lr=2e-4, **kwargs):
    return store.create_run("train", name, PRESET.format(name=name, lr=lr), **kwargs)


def _forget_store(ws) -> None:
    open_store(ws).close()
    store_mod._STORES.clear()
    for suffix in ("", "-wal", "-shm"):
        (ws.root / f"tunebench.db{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- tags and notes


def test_tags_and_note_are_kept_in_the_store_and_the_run_folder(workspace):
    store = open_store(workspace)
    run = _run(store, "a")
    assert (run.tags, run.note) == ([], "")
    run = store.set_labels(run.id, add=["Baseline", "lr-sweep", "baseline"], note="  first try,\n lr 2e-4 ")
    assert run.tags == ["baseline", "lr-sweep"]  # lowercase, each once
    assert run.note == "first try, lr 2e-4"  # one line
    run = store.set_labels(run.id, remove=["lr-sweep"], add=["v2"])
    assert run.tags == ["baseline", "v2"] and run.note == "first try, lr 2e-4"  # a note left as it was
    record = json.loads((workspace.run_dir(run.id) / "run.json").read_text())
    assert record["tags"] == ["baseline", "v2"] and record["note"] == "first try, lr 2e-4"
    assert store.set_labels(run.id, note="").note == ""


@pytest.mark.parametrize("tag", ["", "two words", "a,b", "x" * 33])
def test_a_bad_tag_is_refused_with_what_a_tag_is(workspace, tag):
    store = open_store(workspace)
    run = _run(store, "a")
    with pytest.raises(BadTag, match="is not a tag") as caught:
        store.set_labels(run.id, add=[tag])
    assert "one word" in caught.value.advice
    assert store.get_run(run.id).tags == []


def test_a_rebuilt_store_keeps_tags_and_notes(workspace):
    store = open_store(workspace)
    run = _run(store, "a")
    (workspace.run_dir(run.id) / "preset.yaml").write_text(run.preset_yaml)
    store.set_labels(run.id, add=["keeper"], note="the good one")
    _forget_store(workspace)
    rebuild_store(workspace)
    rebuilt = open_store(workspace).get_run(run.id)
    assert (rebuilt.tags, rebuilt.note) == (["keeper"], "the good one")


def test_a_store_of_the_previous_schema_gains_empty_tags_and_notes(tmp_path, monkeypatch):
    path = tmp_path / "tunebench.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:-1])
    old = Store(path, runs_dir=None)
    with old._write() as conn:
        conn.execute("insert into runs (id, kind, name, state, preset_yaml, created_at) "
                     "values ('r-1', 'train', 'old', 'completed', '', 1.0)")
    old.close()
    monkeypatch.undo()
    run = Store(path, runs_dir=None).get_run("r-1")
    assert (run.tags, run.note) == ([], "")
    assert sqlite3.connect(path).execute("select max(version) from schema_version").fetchone()[0] == store_mod.SCHEMA_VERSION


# --------------------------------------------------------------------------- comparing


@pytest.fixture
def three_runs(tmp_path):
    store = Store(tmp_path / "tunebench.db", runs_dir=None)
    runs = [_run(store, "slow", lr=1e-4), _run(store, "fast", lr=1e-3), _run(store, "pref", lr=1e-4)]
    for k, run in enumerate(runs):
        rows = []
        for step in range(1, 101):
            t = 1000.0 + 10 * k + step * (k + 1)
            rows += [(step, "loss", 3.0 / (step + k), t), (step, "tokens_seen", step * 100.0 * (k + 1), t)]
            if step % 25 == 0:
                rows.append((step, "eval_loss", 4.0 / (step + k) + (0.5 if step == 100 else 0), t))
        if run.name == "pref":
            rows += [(s, "rewards/margins", 0.1 * s, 2000.0 + s) for s in (10, 20, 30)]
            rows += [(40, "rewards/margins", math.nan, 2040.0)]
        store.add_metrics(run.id, rows)
    return store, [store.get_run(r.id) for r in runs]


def test_lines_align_by_step_tokens_and_time(three_runs):
    store, runs = three_runs
    by_step = cmp.load_lines(store, runs, "loss", align="step")
    assert [line.label for line in by_step] == ["slow", "fast", "pref"]
    assert by_step[1].xs[:3] == [1.0, 2.0, 3.0] and by_step[1].rows == 100
    by_tokens = cmp.load_lines(store, runs, "eval_loss", align="tokens")
    assert by_tokens[0].xs == [2500.0, 5000.0, 7500.0, 10000.0]
    assert by_tokens[1].xs == [5000.0, 10000.0, 15000.0, 20000.0]  # twice the tokens per step
    by_time = cmp.load_lines(store, runs, "eval_loss", align="time")
    assert by_time[1].xs[0] == 48.0  # from the run's first report (step 1), not its first evaluation
    assert cmp.load_lines(store, runs, "rewards/margins")[2].ys == pytest.approx([1.0, 2.0, 3.0])  # NaN not drawn
    missing = cmp.load_lines(store, runs, "rewards/margins")[0]
    assert missing.xs == [] and missing.note == "no rewards/margins"


def test_tokens_alignment_says_when_a_run_has_no_counter(three_runs):
    store, runs = three_runs
    store.add_metrics(runs[0].id, [(101, "grad_norm", 1.0, 5000.0)])
    assert cmp.load_lines(store, runs[:1], "grad_norm", align="tokens")[0].xs == [10000.0]  # the counter at step 100
    bare = _run(store, "bare")
    store.add_metrics(bare.id, [(1, "loss", 2.0, 1.0)])
    line = cmp.load_lines(store, [bare], "loss", align="tokens")[0]
    assert line.xs == [] and line.note == "no tokens_seen recorded" and line.rows == 1
    with pytest.raises(cmp.CompareError, match="unknown alignment"):
        cmp.load_lines(store, runs, "loss", align="epochs")


def test_tokens_at_uses_the_last_report_at_or_before_a_step():
    counter = [(10, 1000.0), (20, 2000.0)]
    assert cmp.tokens_at([5, 10, 15, 20, 30], counter) == [500.0, 1000.0, 1000.0, 2000.0, 2000.0]


def test_a_long_series_is_drawn_small_and_keeps_its_spikes(tmp_path):
    store = Store(tmp_path / "tunebench.db", runs_dir=None)
    run = _run(store, "long")
    values = [1.0] * 50_000
    values[31_337], values[7], values[100] = 99.0, -5.0, math.nan
    store.add_metrics(run.id, [(step, "loss", value, float(step)) for step, value in enumerate(values, start=1)]
                      + [(step, "tokens_seen", step * 10.0, float(step)) for step in range(1, 50_001)])
    count, points = store.metric_series(run.id, "loss", 200)
    assert count == 50_000 and len(points) <= 400 and all(not math.isnan(v) for _, v, _ in points)
    steps = [step for step, _, _ in points]
    assert steps == sorted(steps) and (31_338, 99.0, 31_338.0) in points and (8, -5.0, 8.0) in points
    assert store.metric_series(run.id, "loss")[1][:2] == [(1, 1.0, 1.0), (2, 1.0, 2.0)]  # no buckets: every row
    line = cmp.load_lines(store, [run], "loss", align="tokens")[0]
    assert line.rows == 50_000 and len(line.xs) <= 400
    assert line.xs[line.ys.index(99.0)] == pytest.approx(313_380, abs=10 * 2 * 50_000 / cmp.TOKEN_BUCKETS)
    assert (line.figure.final, line.figure.best, line.figure.best_step) == (1.0, -5.0, 8)


def test_only_the_settings_that_differ_are_listed(three_runs):
    store, runs = three_runs
    comparison = cmp.compare(store, runs)
    assert comparison.differences == [("training.lr", [1e-4, 1e-3, 1e-4])]  # not the names, not the same values
    assert cmp.setting_differences(["a: {b: 1}\n", "a: {b: 1, c: 2}\n"]) == [("a.c", [None, 2])]
    assert cmp.setting_differences(["a: [", "a: 1"]) == [("a", [None, 1])]  # unreadable YAML reads as empty


def test_final_and_best_figures_follow_each_metrics_direction(three_runs):
    store, runs = three_runs
    comparison = cmp.compare(store, runs)
    slow = comparison.figures[0].figures
    assert slow["loss"].final == pytest.approx(0.03) and slow["loss"].best == pytest.approx(0.03)
    assert slow["eval_loss"].final == pytest.approx(0.54) and slow["eval_loss"].best_step == 75
    assert "rewards/margins" not in slow
    margins = comparison.figures[2].figures["rewards/margins"]
    assert (margins.final, margins.best, margins.best_step) == (pytest.approx(3.0), pytest.approx(3.0), 30)
    assert comparison.metrics[:3] == ["loss", "eval_loss", "rewards/margins"]
    assert "tokens_seen" in comparison.metrics
    data = comparison.as_json()
    assert data["differences"] == [{"key": "training.lr", "values": {runs[0].id: 1e-4, runs[1].id: 1e-3,
                                                                      runs[2].id: 1e-4}}]
    assert data["figures"][runs[2].id]["rewards/margins"]["best_step"] == 30


def test_resolve_runs_wants_two_to_six_different_runs(three_runs):
    store, runs = three_runs
    assert [r.id for r in cmp.resolve_runs(store, ["slow", "fast"])] == [runs[0].id, runs[1].id]
    with pytest.raises(cmp.CompareError, match="1 run.*2 to 6"):
        cmp.resolve_runs(store, ["slow"])
    with pytest.raises(cmp.CompareError, match="named twice"):
        cmp.resolve_runs(store, ["slow", runs[0].id])


# --------------------------------------------------------------------------- finding runs


def test_filter_terms_match_fields_and_free_text(three_runs):
    store, runs = three_runs
    store.set_labels(runs[0].id, add=["v1"], note="Slow but steady")
    store.set_labels(runs[1].id, add=["v10"])
    runs = [store.get_run(r.id) for r in runs]
    names = lambda query: [r.name for r in cmp.filter_runs(runs, query)]  # noqa: E731
    assert names("") == ["slow", "fast", "pref"]
    assert names("#v1") == names("tag:v1") == ["slow"]  # a tag matches whole: v10 is not v1
    assert names("steady") == ["slow"] and names("note:STEADY") == ["slow"]
    assert names("method:lora state:queued") == ["slow", "fast", "pref"]
    assert names("preset:fa") == ["fast"] and names("method:full") == []
    with pytest.raises(cmp.FilterError, match="'colour' in 'colour:red' is not a field"):
        cmp.filter_runs(runs, "colour:red")


def test_sorting_puts_runs_without_a_value_last_either_way(three_runs):
    store, runs = three_runs
    empty = _run(store, "empty")
    runs = [store.get_run(r.id) for r in runs] + [empty]
    by_loss = [r.name for r in cmp.sort_runs(runs, "loss")]
    assert by_loss == ["pref", "fast", "slow", "empty"]
    assert [r.name for r in cmp.sort_runs(runs, "loss", descending=True)] == ["slow", "fast", "pref", "empty"]
    assert [r.name for r in cmp.sort_runs(runs, "name")] == ["empty", "fast", "pref", "slow"]
    with pytest.raises(cmp.FilterError, match="cannot sort by 'colour'"):
        cmp.sort_runs(runs, "colour")
