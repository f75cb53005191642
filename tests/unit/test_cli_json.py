"""The CLI for scripts: --json shapes (the README's "Output for scripts"), stdout holding the JSON
alone, tables never cut when piped, --version, shell completion, NO_COLOR."""

from __future__ import annotations

import json
import re

import pytest
from helpers.checkpoints import fake_trained_run

from tui.cli import main

RUN_KEYS = {"id", "name", "kind", "state", "priority", "step", "total_steps", "progress", "last_loss", "best_eval_loss",
            "best_eval_step", "findings", "attempt", "gpu", "created_at", "started_at", "finished_at", "running_s",
            "parent_run", "parent_checkpoint", "dry_run", "error", "advice", "tags", "note"}
ENGINE_KEYS = {"running", "pid", "gpus", "current_runs", "queue_length", "started_at"}


def _json(workspace, capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["-w", str(workspace.root), *args])
    return code, json.loads(capsys.readouterr().out)  # stdout parses whole: nothing but the JSON


@pytest.fixture
def trained(workspace):
    run_id = fake_trained_run(workspace)
    from jobs.store import open_store

    open_store(workspace).add_eval_result(run_id, {"target_run": run_id, "checkpoint": None, "out_dir": "x",
                                                   "result": {"loss": {"finetuned": {"eval_loss": 1.5}}}})
    return run_id


def test_ls_json(workspace, capsys, trained):
    code, data = _json(workspace, capsys, "ls", "--json")
    assert code == 0 and set(data) == {"runs", "total", "engine"}
    assert data["total"] == 1 and set(data["runs"][0]) == RUN_KEYS
    assert data["runs"][0]["id"] == trained and data["runs"][0]["state"] == "completed"
    assert set(data["engine"]) == ENGINE_KEYS and data["engine"]["running"] is False


def test_show_json_has_checkpoints_findings_events_and_eval_results(workspace, capsys, trained):
    code, data = _json(workspace, capsys, "show", "trained", "--json")
    assert code == 0 and RUN_KEYS | {"folder", "info", "checkpoints", "findings", "events", "eval_results"} == set(data)
    assert [c["step"] for c in data["checkpoints"]] == [10, 20, 30]
    assert set(data["checkpoints"][0]) == {"step", "path", "eval_loss", "size_bytes", "best", "keep"}
    assert data["eval_results"][0]["target_run"] == trained
    assert data["eval_results"][0]["results"]["loss"]["finetuned"]["eval_loss"] == 1.5


def test_checkpoints_json(workspace, capsys, trained):
    code, data = _json(workspace, capsys, "checkpoints", "trained", "--json")
    assert code == 0 and set(data) == {"run", "name", "state", "checkpoints"}
    first = data["checkpoints"][0]
    assert set(first) == {"step", "path", "train_loss", "eval_loss", "size_bytes", "created_at", "best", "keep", "latest", "on_disk"}
    assert [c["step"] for c in data["checkpoints"] if c["best"]] == [20]


def test_engine_status_json_when_down_exits_1(workspace, capsys):
    code, data = _json(workspace, capsys, "engine", "status", "--json")
    assert code == 1 and set(data) == ENGINE_KEYS and data["running"] is False


def test_eval_json_prints_the_queued_run_and_notices_go_to_stderr(workspace, capsys, trained):
    code, data = _json(workspace, capsys, "eval", "trained", "--no-engine", "--json")
    assert code == 0 and set(data) == {"run", "results"}
    assert data["run"]["kind"] == "eval" and data["run"]["state"] == "queued" and data["results"] is None


def test_a_piped_table_is_not_cut(workspace, capsys, monkeypatch, trained):
    monkeypatch.setenv("COLUMNS", "40")  # narrower than the table; capsys is not a terminal
    assert main(["-w", str(workspace.root), "ls"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    header = next(line for line in out.splitlines() if "best eval" in line)
    assert "completed" in out and trained in out and "doctor" in header
    assert main(["-w", str(workspace.root), "checkpoints", "trained"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "train loss" in out and "★ best" in out
    assert main(["-w", str(workspace.root), "presets", "list"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "qlora" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and re.fullmatch(r"tunebench \S+.*\n", capsys.readouterr().out)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(shell, capsys):
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "tunebench" in script and "_ARGCOMPLETE" in script


def test_no_color_is_honoured(workspace, capsys, monkeypatch, trained):
    colour = re.compile(r"\x1b\[[0-9;]*3[0-9](;[0-9]+)*m")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal-like console would colour the state column
    assert main(["-w", str(workspace.root), "ls"]) == 0
    assert colour.search(capsys.readouterr().out)
    monkeypatch.setenv("NO_COLOR", "1")
    assert main(["-w", str(workspace.root), "ls"]) == 0
    assert not colour.search(capsys.readouterr().out)
