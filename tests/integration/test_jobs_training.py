"""Real training through the engine: the tiny model on the CPU, the demo data, a real engine subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from jobs import control
from jobs.engine_process import engine_status, start_engine
from jobs.store import open_store
from helpers.engine_process import REPO_ROOT, kill_engine_group, wait_for, wait_parked, wait_state

pytest.importorskip("engine.train")

# Short runs: a step every few hundred milliseconds on the CPU, a checkpoint every few steps.
SHORT = ["training.logging_steps=1", "training.eval_steps=4", "training.save_steps=4", "training.keep_last=10"]


def _train(ws, steps: int, **kwargs):
    return control.submit(ws, "demo", overrides=[f"training.max_steps={steps}", *SHORT], **kwargs)


def _loss_steps(store, run_id, after_time: float = 0.0) -> list[int]:
    return [m.step for m in store.metrics_since(run_id, names=["loss"]) if m.time >= after_time]


@pytest.mark.slow
def test_three_training_jobs_run_in_order_and_metrics_are_readable_while_they_run(ws):
    runs = [_train(ws, 4, start=False) for _ in range(3)]
    start_engine(ws)
    store = open_store(ws)
    # While the first trains, another process reads its metrics.
    wait_for(lambda: store.get_run(runs[0].id).state == "running" and store.metrics_since(runs[0].id, names=["loss"]),
             120, "the first run's first loss")
    code = ("import sys; from jobs.store import Store; s = Store(sys.argv[1]);"
            "print(s.get_run(sys.argv[2]).state, len(s.metrics_since(sys.argv[2], names=['loss'])))")
    reader = subprocess.run([sys.executable, "-c", code, str(ws.store_db), runs[0].id], capture_output=True,
                            text=True, check=True, cwd=REPO_ROOT).stdout.split()
    assert int(reader[1]) >= 1
    done = [wait_state(ws, r.id, ("completed", "failed"), timeout=240) for r in runs]
    assert [r.state for r in done] == ["completed"] * 3, [r.error for r in done]
    for earlier, later in zip(done, done[1:]):
        assert earlier.finished_at <= later.started_at
    for run in done:
        assert (run.step, run.total_steps) == (4, 4)
        assert run.last_loss is not None and run.best_eval_loss is not None
        assert _loss_steps(store, run.id) == [1, 2, 3, 4]
        assert [c.step for c in store.list_checkpoints(run.id)] == [4]
        assert (ws.run_dir(run.id) / "final").is_dir()
    # run.log tells the run's story as it goes, not just its header and its end.
    story = (ws.run_dir(done[0].id) / "run.log").read_text()
    for line in ("loading tokenizer and data", "loading model on cpu", "started: ", "training samples",
                 "step 1/4: loss ", "step 4/4: eval loss ", "checkpoint at step 4: ", "saved the result to ",
                 f"=== run {done[0].id}: completed"):
        assert line in story, story


@pytest.mark.slow
def test_cancel_a_running_training_job_saves_a_checkpoint(ws):
    run = _train(ws, 20, park_at_step=2)  # waits after step 2 until the cancel arrives
    queued = _train(ws, 4)
    store = open_store(ws)
    wait_parked(ws, run.id)
    assert control.cancel(ws, queued.id).state == "cancelled"
    control.cancel(ws, run.id)
    cancelled = wait_state(ws, run.id, ("cancelled", "failed"), timeout=60)
    assert cancelled.state == "cancelled", cancelled.error
    checkpoints = store.list_checkpoints(run.id)
    assert checkpoints and os.path.isdir(checkpoints[-1].path)
    assert checkpoints[-1].step == cancelled.step == 3  # the step in flight when it left the park
    assert store.get_run(queued.id).started_at is None


@pytest.mark.slow
def test_kill_9_then_restart_interrupts_and_resume_continues_from_the_checkpoint(ws):
    run = _train(ws, 12, park_at_step=8)  # checkpoints at 4 and 8, then it waits for the kill
    store = open_store(ws)
    wait_parked(ws, run.id)
    assert [c.step for c in store.list_checkpoints(run.id)] == [4, 8]
    kill_engine_group(ws)  # engine and job process at once: nothing gets to save or record anything
    start_engine(ws)
    interrupted = wait_state(ws, run.id, "interrupted", timeout=30)
    checkpoint_step = max(c.step for c in store.list_checkpoints(run.id))
    assert checkpoint_step == 8
    assert f"step {checkpoint_step}" in interrupted.error
    assert f"tunebench resume {run.id}" in interrupted.advice

    resumed = control.resume(ws, run.id)
    assert (resumed.id, resumed.attempt, resumed.info["resume_step"]) == (run.id, 2, checkpoint_step)
    assert max(_loss_steps(store, run.id)) <= checkpoint_step  # the lost attempt's later steps are forgotten
    resumed_at = resumed.created_at
    resume_time = max(e.time for e in store.events_since(run.id) if "resume" in e.text)
    done = wait_state(ws, run.id, ("completed", "failed"), timeout=240)
    assert done.state == "completed", done.error
    steps = _loss_steps(store, run.id)
    assert steps == sorted(set(steps)) and steps[-1] == 12  # every step once
    after = _loss_steps(store, run.id, after_time=resume_time)
    assert after and min(after) == checkpoint_step + 1  # training went on from the checkpoint's step
    assert resumed_at == run.created_at


@pytest.mark.slow
def test_sigterm_to_the_engine_checkpoints_the_training_job(ws):
    run = _train(ws, 20, park_at_step=2)
    store = open_store(ws)
    wait_parked(ws, run.id)
    os.kill(engine_status(ws).pid, signal.SIGTERM)
    interrupted = wait_state(ws, run.id, ("interrupted", "failed"), timeout=60)
    assert interrupted.state == "interrupted", interrupted.error
    wait_for(lambda: not engine_status(ws).running, 30, "the engine to exit")
    assert store.list_checkpoints(run.id)[-1].step == interrupted.step == 3
    assert "resume" in interrupted.advice
