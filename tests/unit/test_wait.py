"""`tunebench wait` (an exit code per outcome) and `tunebench metrics --csv | --json`, against a real
run store; the engine's part is played by the sleep between two looks, so no test waits on a clock."""

from __future__ import annotations

import csv
import io
import json

import pytest

from jobs.export import WAIT_CODES, metrics_csv, wait_for_run
from jobs.store import RunNotFound, Store
from tui.cli import build_parser, main


def _store(workspace) -> Store:
    return Store(workspace.store_db)


def _run(store: Store, name: str, *states: str, **fields) -> str:
    run = store.create_run("train", name, f"name: {name}\n")
    for state in states:
        store.set_state(run.id, state, **(fields if state == states[-1] else {}))
    return run.id


def test_wait_returns_when_the_run_ends_and_reports_each_move(workspace):
    store = _store(workspace)
    run_id = _run(store, "demo")
    script = iter([("running", 0), ("running", 5), ("completed", 10)])
    seen = []

    def engine_moves(_seconds: float) -> None:  # one engine step per look
        state, step = next(script)
        if store.get_run(run_id).state != state:
            store.set_state(run_id, state)
        store.update_run(run_id, step=step)

    run = wait_for_run(store, run_id, sleep=engine_moves, on_change=lambda r: seen.append((r.state, r.step)))
    assert run.state == "completed"
    assert seen == [("queued", 0), ("running", 0), ("running", 5), ("completed", 10)]


def test_wait_gives_up_at_the_timeout(workspace):
    store = _store(workspace)
    run_id = _run(store, "slow", "running")
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    run = wait_for_run(store, run_id, timeout=3.0, poll=1.0, sleep=sleep, clock=lambda: now[0])
    assert run.state == "running" and now[0] == 3.0


def test_wait_on_a_deleted_run_says_so(workspace):
    store = _store(workspace)
    run_id = _run(store, "gone")
    with pytest.raises(RunNotFound, match="deleted while waiting"):
        wait_for_run(store, run_id, sleep=lambda _: store.delete_run(run_id))


@pytest.mark.parametrize("states, code", [
    (("running", "completed"), 0), (("running", "failed"), 1), (("running", "interrupted"), 3),
    (("running", "cancelled"), 5)])
def test_wait_exit_codes(workspace, capsys, states, code):
    _run(_store(workspace), "job", *states)
    assert main(["-w", str(workspace.root), "wait", "job"]) == code == WAIT_CODES[states[-1]]
    assert capsys.readouterr().out.startswith("r-")


def test_wait_timeout_json_and_unknown_run(workspace, capsys):
    _run(_store(workspace), "job", "running")
    assert main(["-w", str(workspace.root), "wait", "job", "--timeout", "0", "--quiet"]) == 6
    assert capsys.readouterr().out == ""
    assert main(["-w", str(workspace.root), "wait", "job", "--timeout", "0"]) == 6
    err = " ".join(capsys.readouterr().err.split())
    assert "the engine is not running: job moves only once it is" in err and "is still running" in err
    _run(_store(workspace), "done", "running", "failed", error="CUDA out of memory")
    assert main(["-w", str(workspace.root), "wait", "done", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "failed" and data["error"] == "CUDA out of memory"
    assert main(["-w", str(workspace.root), "wait", "nothing-like-it"]) == 2
    assert "nothing-like-it" in capsys.readouterr().err


def test_wait_help_documents_the_exit_codes():
    text = build_parser()._subparsers._group_actions[0].choices["wait"].format_help()
    for words in ("0 completed", "1 failed", "3 interrupted", "5 cancelled", "6 still queued or running"):
        assert words in text


def _with_metrics(store: Store) -> str:
    run_id = _run(store, "metered", "running")
    store.add_metrics(run_id, [(1, "loss", 2.5, 100.0), (1, "lr", 1e-4, 100.0), (2, "loss", float("nan"), 101.0),
                               (2, "eval_loss", 2.0, 102.0), (2, "tokens_per_s", 300.0, 101.0)])
    return run_id


def test_metrics_csv_one_row_per_step(workspace, capsys):
    run_id = _with_metrics(_store(workspace))
    assert main(["-w", str(workspace.root), "metrics", "metered", "--csv"]) == 0
    out = capsys.readouterr().out
    assert out == metrics_csv(_store(workspace), run_id)
    rows = list(csv.reader(io.StringIO(out)))
    assert rows == [["step", "time", "loss", "eval_loss", "lr", "tokens_per_s"],
                    ["1", "100.0", "2.5", "", "0.0001", ""],
                    ["2", "102.0", "nan", "2.0", "", "300.0"]]


def test_metrics_json_and_output_file(workspace, capsys, tmp_path):
    _with_metrics(_store(workspace))
    assert main(["-w", str(workspace.root), "metrics", "metered", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)  # valid JSON: NaN is the string "nan"
    assert data["run"]["name"] == "metered"
    assert data["columns"] == ["step", "time", "loss", "eval_loss", "lr", "tokens_per_s"]
    assert data["rows"][1] == {"step": 2, "time": 102.0, "loss": "nan", "eval_loss": 2.0, "tokens_per_s": 300.0}
    target = tmp_path / "m.csv"
    assert main(["-w", str(workspace.root), "metrics", "metered", "-o", str(target)]) == 0
    assert target.read_text().startswith("step,time,loss,")
