"""The job queue and the engine process, driven for real: a detached engine subprocess on a
temporary workspace, jobs as dry runs (the whole queue → engine → job-process path, no training).
Real training through the engine is in test_jobs_training.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs import control
from jobs.engine_process import engine_status, start_engine, stop_engine
from jobs.queue import JobQueue
from jobs.store import open_store

from helpers.engine_process import REPO_ROOT, kill_engine_group, wait_for, wait_state

def submit_dry(ws, seconds: float = 0.0, **kwargs):
    return control.submit(ws, "demo", dry_run=True, dry_run_seconds=seconds, **kwargs)


# --------------------------------------------------------------------------- order, priority, status


def test_jobs_run_one_at_a_time_in_submission_order(ws):
    runs = [submit_dry(ws, 0.3, start=False) for _ in range(3)]
    assert [r.state for r in runs] == ["queued"] * 3
    start_engine(ws)
    done = [wait_state(ws, r.id, "completed") for r in runs]
    assert [r.started_at for r in done] == sorted(r.started_at for r in done)
    for earlier, later in zip(done, done[1:]):
        assert earlier.finished_at <= later.started_at  # one at a time on a CPU-only machine
    store = open_store(ws)
    for run in done:
        texts = [e.text for e in store.events_since(run.id)]
        assert "queued → running" in texts and "running → completed" in texts
        assert store.metrics_since(run.id, names=["dry_run_tick"])
        assert (ws.run_dir(run.id) / "run.log").read_text().strip().endswith("completed")
        assert (ws.run_dir(run.id) / "preset.yaml").is_file()


def test_higher_priority_runs_first(ws):
    low = [submit_dry(ws, start=False) for _ in range(2)]
    high = submit_dry(ws, priority=5, start=False)
    start_engine(ws)
    finished = [wait_state(ws, r.id, "completed") for r in (*low, high)]
    assert min(finished, key=lambda r: r.started_at).id == high.id


def test_set_priority_moves_a_queued_run(ws):
    runs = [submit_dry(ws, start=False) for _ in range(3)]
    moved = control.set_priority(ws, runs[2].id, 10)
    assert moved.priority == 10
    assert JobQueue(ws).pending_run_ids() == [runs[2].id, runs[0].id, runs[1].id]
    start_engine(ws)
    finished = [wait_state(ws, r.id, "completed") for r in runs]
    assert min(finished, key=lambda r: r.started_at).id == runs[2].id
    with pytest.raises(control.ControlError, match="only a queued run"):
        control.set_priority(ws, runs[0].id, 1)


def test_engine_status_reports_the_running_job(ws):
    run = submit_dry(ws, 30)
    wait_state(ws, run.id, "running")
    queued = submit_dry(ws)
    status = engine_status(ws)
    assert status.running and status.pid
    assert isinstance(status.gpus, list)
    assert (status.current_run, status.queue_length) == (run.id, 1)
    assert ws.engine_pid.read_text().strip() == str(status.pid)
    control.cancel(ws, queued.id)
    control.cancel(ws, run.id)
    wait_state(ws, run.id, "cancelled")


def test_metrics_are_readable_from_another_process_while_the_job_runs(ws):
    run = submit_dry(ws, 20)
    wait_state(ws, run.id, "running")
    store = open_store(ws)
    wait_for(lambda: store.metrics_since(run.id), 10, "the first metric")
    code = ("import sys; from jobs.store import Store; s = Store(sys.argv[1]); r = s.get_run(sys.argv[2]);"
            "print(r.state, len(s.metrics_since(sys.argv[2], names=['dry_run_tick'])))")
    out = subprocess.run([sys.executable, "-c", code, str(ws.store_db), run.id], capture_output=True, text=True,
                         check=True, cwd=REPO_ROOT).stdout.split()
    assert out[0] == "running" and int(out[1]) >= 1
    control.cancel(ws, run.id)
    wait_state(ws, run.id, "cancelled")


# --------------------------------------------------------------------------- cancel, shutdown, crashes


def test_cancel_a_queued_job_and_a_running_one(ws):
    running = submit_dry(ws, 30)
    queued = submit_dry(ws, 0)
    wait_state(ws, running.id, "running")
    assert control.cancel(ws, queued.id).state == "cancelled"
    assert control.cancel(ws, running.id).state == "running"  # stops at its next step boundary
    stopped = wait_state(ws, running.id, "cancelled", timeout=15)
    assert stopped.error is None
    store = open_store(ws)
    never = store.get_run(queued.id)
    assert never.started_at is None
    assert all("running" not in e.text for e in store.events_since(queued.id))
    with pytest.raises(control.ControlError, match="nothing to cancel"):
        control.cancel(ws, queued.id)
    assert queued.id not in JobQueue(ws).pending_run_ids()
    # A task for a run that is no longer queued (a race with cancel) is skipped, not run.
    JobQueue(ws).enqueue(queued.id)
    follow = submit_dry(ws)
    wait_state(ws, follow.id, "completed")
    assert store.get_run(queued.id).state == "cancelled"


def test_sigterm_to_the_engine_interrupts_the_job_and_the_engine_exits(ws):
    run = submit_dry(ws, 30)
    wait_state(ws, run.id, "running")
    assert stop_engine(ws, timeout=30)
    assert not engine_status(ws).running
    ended = open_store(ws).get_run(run.id)
    assert ended.state == "interrupted"
    assert not ws.engine_pid.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_stop_the_engine_as_sigterm_does(ws, signum):
    run = submit_dry(ws, 30)
    wait_state(ws, run.id, "running")
    os.kill(engine_status(ws).pid, signum)
    wait_state(ws, run.id, "interrupted", timeout=30)
    wait_for(lambda: not engine_status(ws).running, 30, "the engine to exit")
    time.sleep(0.5)
    assert not engine_status(ws).running  # stopped, not restarted (Huey's own SIGHUP restarts)


def test_a_discarded_run_leaves_the_queue_and_may_come_back(workspace):
    queue = JobQueue(workspace)
    queue.enqueue("run-a")
    queue.enqueue("run-b")
    queue.enqueue("run-a", 5)
    assert queue.pending_run_ids() == ["run-a", "run-a", "run-b"]
    assert queue.discard("run-a") == 2
    assert queue.pending_run_ids() == ["run-b"] and len(queue) == 1
    assert JobQueue(workspace).pending_run_ids() == ["run-b"]  # as every other process sees it
    assert queue.discard("run-a") == 0
    queue.enqueue("run-a")
    assert queue.pending_run_ids() == ["run-b", "run-a"]


def test_engine_killed_hard_leaves_runs_interrupted_and_requeues_lost_tasks(ws):
    run = submit_dry(ws, 60)
    wait_state(ws, run.id, "running")
    kill_engine_group(ws)  # engine and job process at once, as a power cut would
    store = open_store(ws)
    assert store.get_run(run.id).state == "running"  # nobody was left to record anything
    # A queued run whose task a dead engine had already taken off queue.db:
    lost = store.create_run("train", "lost", store.get_run(run.id).preset_yaml, info={"dry_run": True})
    start_engine(ws)
    interrupted = wait_state(ws, run.id, "interrupted", timeout=15)
    assert "engine stopped" in interrupted.error
    assert "retry" in interrupted.advice  # a dry run has no checkpoint
    wait_state(ws, lost.id, "completed")


def test_a_job_orphaned_by_a_killed_engine_interrupts_itself(ws):
    run = submit_dry(ws, 60)
    running = wait_state(ws, run.id, "running")
    wait_for(lambda: open_store(ws).get_run(run.id).worker_pid, 10, "the job process")
    os.kill(engine_status(ws).pid, signal.SIGKILL)  # only the engine: its job process lives on
    ended = wait_state(ws, run.id, "interrupted", timeout=15)
    assert ended.engine_pid == running.engine_pid


# --------------------------------------------------------------------------- submitting


def test_invalid_presets_are_rejected_before_anything_is_queued(ws):
    from presets import PresetError

    with pytest.raises(PresetError, match="training.lr"):
        control.submit(ws, "demo", overrides=["training.lr=-1"])
    with pytest.raises(PresetError, match="model.path: no such file"):
        control.submit(ws, "demo", overrides=[f"model.path={ws.root / 'no-model'}"])
    with pytest.raises(PresetError, match="no preset"):
        control.submit(ws, "no-such-preset")
    assert open_store(ws).list_runs() == []
    assert len(JobQueue(ws)) == 0
    assert not engine_status(ws).running
    assert list(ws.runs_dir.iterdir()) == []


_SUBMITTER = """
import sys
from jobs import control
from jobs.workspace import Workspace
from pathlib import Path
ws = Workspace(Path(sys.argv[1]))
print(" ".join(control.submit(ws, "demo", dry_run=True, start=False, name=sys.argv[2]).id for _ in range(50)))
"""


@pytest.mark.slow
def test_two_processes_submitting_fifty_jobs_each(ws):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", _SUBMITTER, str(ws.root), name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for name in ("a", "b")]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    ids = [rid for out, _ in outputs for rid in out.split()]
    assert len(ids) == 100 and len(set(ids)) == 100
    store = open_store(ws)
    assert store.count_runs() == 100
    assert len(JobQueue(ws).pending_run_ids()) == 100
    start_engine(ws)
    wait_for(lambda: store.count_runs("completed") == 100, 240, "100 completed runs")
    for rid in ids:  # each ran exactly once
        assert [e.text for e in store.events_since(rid)].count("queued → running") == 1
    assert len({r.name for r in store.list_runs()}) == 100


# --------------------------------------------------------------------------- resume, retry, remove


def test_retry_is_a_new_run_and_resume_needs_a_checkpoint(ws):
    first = submit_dry(ws, 30)
    wait_state(ws, first.id, "running")
    control.cancel(ws, first.id)
    wait_state(ws, first.id, "cancelled")
    again = control.retry(ws, first.id)
    assert again.id != first.id and again.parent_run == first.id and again.dry_run
    assert again.name == f"{first.name}-2"
    control.cancel(ws, again.id)
    wait_state(ws, again.id, "cancelled", timeout=30)
    # A dry run resumes in place: same id, next attempt.
    resumed = control.resume(ws, first.id)
    assert (resumed.id, resumed.attempt) == (first.id, 2)
    control.cancel(ws, first.id)
    wait_state(ws, first.id, "cancelled", timeout=30)
    completed = wait_state(ws, submit_dry(ws).id, "completed")
    with pytest.raises(control.ControlError, match="only interrupted, cancelled, failed"):
        control.resume(ws, completed.id)


def test_remove_deletes_rows_and_files(ws):
    run = wait_state(ws, submit_dry(ws).id, "completed")
    folder = ws.run_dir(run.id)
    assert folder.is_dir()
    control.remove(ws, run.name)
    assert open_store(ws).get_run(run.id) is None
    assert not folder.exists()
    assert not [p for p in ws.runs_dir.iterdir() if p.name.startswith(".deleting")]
    with pytest.raises(control.ControlError, match="no run matches"):
        control.remove(ws, run.id)


def test_a_failing_job_is_failed_with_the_error(ws):
    """A job whose frozen preset points at a model that vanished after submit fails with the reason."""
    import shutil

    run = control.submit(ws, "demo", overrides=["training.max_steps=2"], start=False)
    shutil.rmtree(ws.models_dir / "tiny")
    start_engine(ws)
    failed = wait_state(ws, run.id, "failed", timeout=120)
    assert failed.error and failed.advice
    assert (ws.run_dir(run.id) / "run.log").stat().st_size > 0


# --------------------------------------------------------------------------- the CLI


def _cli(ws, *argv) -> int:
    from tui.cli import main

    return main(["--workspace", str(ws.root), *argv])


def test_cli_verbs(ws, capsys):
    assert _cli(ws, "submit", "demo", "--dry-run", "--name", "cli-run") == 0
    out = capsys.readouterr().out
    run_id = out.split()[3]
    wait_state(ws, run_id, "completed")
    assert _cli(ws, "ls") == 0
    listing = capsys.readouterr().out
    assert run_id in listing and "completed" in listing and "engine running" in listing
    assert _cli(ws, "show", "cli-run") == 0
    shown = capsys.readouterr().out
    assert "running → completed" in shown and str(ws.run_dir(run_id)) in shown
    assert _cli(ws, "logs", run_id) == 0
    assert "=== run" in capsys.readouterr().out
    assert _cli(ws, "logs", "-f", run_id) == 0  # an ended run: prints and returns
    assert _cli(ws, "engine", "status") == 0
    assert "engine running" in capsys.readouterr().out
    assert _cli(ws, "cancel", run_id) == 2
    assert "nothing to cancel" in capsys.readouterr().err
    assert _cli(ws, "submit", "demo", "--set", "training.epochs=0") == 2
    assert "training.epochs" in capsys.readouterr().err
    assert _cli(ws, "show", "nope") == 2
    assert "no run matches" in capsys.readouterr().err
    assert _cli(ws, "rm", run_id, "--yes") == 0
    assert open_store(ws).get_run(run_id) is None
    assert _cli(ws, "engine", "stop") == 0
    assert _cli(ws, "engine", "status") == 1


def test_cli_verbs_do_not_import_torch(ws):
    code = ("import sys; from tui.cli import main; main(['--workspace', sys.argv[1], 'ls']);"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules];"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(ws.root)], capture_output=True, text=True, check=True,
                         cwd=REPO_ROOT).stdout
    assert "HEAVY []" in out


def test_engine_start_detaches_and_survives_its_starter(ws):
    code = "import sys; from jobs.engine_process import start_engine; from jobs.workspace import Workspace;" \
           "from pathlib import Path; print(start_engine(Workspace(Path(sys.argv[1]))).pid)"
    pid = int(subprocess.run([sys.executable, "-c", code, str(ws.root)], capture_output=True, text=True, check=True,
                             cwd=REPO_ROOT).stdout)
    status = engine_status(ws)  # the process that started it has exited; the engine has not
    assert status.running and status.pid == pid
    assert os.getsid(pid) == pid  # its own session: no terminal's SIGHUP reaches it
    info = json.loads((ws.root / "engine.json").read_text())
    assert info["pid"] == pid


def test_an_engine_whose_workspace_is_deleted_exits(ws):
    import shutil

    import psutil

    pid = start_engine(ws).pid
    # Moved away in one step, then removed: an rmtree races the engine's own writes (it may add a
    # file to a folder rmtree has just emptied), and the engine sees the same missing workspace.
    removed = ws.root.with_name(ws.root.name + "-removed")
    ws.root.rename(removed)
    shutil.rmtree(removed, ignore_errors=True)

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, 30, "the engine of a deleted workspace to exit")
