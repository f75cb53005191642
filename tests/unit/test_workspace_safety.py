"""The workspace is private to its owner (0700 / 0600), an open one is pointed out, and engine.log
does not grow without bound."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from jobs import engine_process
from jobs.engine_process import Engine, rotate_log
from jobs.workspace import Workspace, exposure_warning
from tui.cli import main


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def lax_umask():
    """The common default umask, whatever the test runner had; restored afterwards."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --------------------------------------------------------------------------- permissions


def test_a_fresh_workspace_made_by_the_cli_is_private(tmp_path, lax_umask, capsys):
    root = tmp_path / "fresh"
    assert main(["-w", str(root), "ls"]) == 0
    assert mode(root) == 0o700
    assert mode(root / "tunebench.db") == 0o600
    for path in root.iterdir():  # the -wal / -shm files too, whatever ls made
        assert mode(path) & 0o077 == 0, path
    assert "warning" not in capsys.readouterr().err
    assert os.umask(0o022) == 0o022  # main() gave the process its umask back


def test_ensure_makes_private_folders_whatever_the_umask(tmp_path, lax_umask):
    ws = Workspace(tmp_path / "a" / "ws").ensure()
    for path in (ws.root, ws.runs_dir, ws.presets_dir):
        assert mode(path) == 0o700
    assert exposure_warning(ws) is None


def test_an_open_workspace_is_pointed_out_once_by_the_cli(tmp_path, capsys):
    root = tmp_path / "shared"
    Workspace(root).ensure()
    root.chmod(0o755)
    assert main(["-w", str(root), "ls"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert f"the workspace {root} is open to other users" in err and "0755" in err
    assert f"chmod -R go-rwx {root}" in err
    assert mode(root) == 0o755  # pointed out, not changed behind the user's back


def test_an_open_workspace_is_logged_by_the_engine(tmp_path, monkeypatch, caplog):
    ws = Workspace(tmp_path / "ws").ensure()
    ws.root.chmod(0o750)
    engine = Engine(ws)
    monkeypatch.setattr(engine, "recover", lambda: None)
    monkeypatch.setattr(engine, "consume", lambda: None)
    with caplog.at_level(logging.WARNING, logger="tunebench.engine"):
        assert engine.run() == 0
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"chmod -R go-rwx {ws.root}" in warning.getMessage()


# --------------------------------------------------------------------------- engine.log rotation


def test_a_large_engine_log_is_rotated_keeping_three(tmp_path):
    log = tmp_path / "engine.log"
    for index, text in ((1, "one"), (2, "two"), (3, "three")):
        (tmp_path / f"engine.log.{index}").write_text(text)
    log.write_text("x" * 200)

    assert rotate_log(log, max_bytes=100, backups=3)
    assert not log.exists()
    assert (tmp_path / "engine.log.1").read_text() == "x" * 200
    assert (tmp_path / "engine.log.2").read_text() == "one"
    assert (tmp_path / "engine.log.3").read_text() == "two"
    assert not (tmp_path / "engine.log.4").exists()  # "three", the oldest, is gone


def test_a_small_or_missing_engine_log_is_left_alone(tmp_path):
    log = tmp_path / "engine.log"
    assert not rotate_log(log, max_bytes=100)
    log.write_text("x" * 100)
    assert not rotate_log(log, max_bytes=100)
    assert log.read_text() == "x" * 100 and list(tmp_path.iterdir()) == [log]


def test_starting_an_engine_rotates_its_log_first(tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws").ensure()
    ws.engine_log.write_text("y" * 50)
    monkeypatch.setattr(engine_process, "LOG_MAX_BYTES", 10)

    class Started(Exception):
        pass

    def no_engine(*args, stdout, **kwargs):
        assert os.fstat(stdout.fileno()).st_size == 0  # the engine writes to a fresh engine.log
        raise Started

    monkeypatch.setattr(engine_process.subprocess, "Popen", no_engine)
    with pytest.raises(Started):
        engine_process.start_engine(ws)
    assert (ws.root / "engine.log.1").read_text() == "y" * 50
