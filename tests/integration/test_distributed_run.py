"""Real 2-process DDP training on the CPU (gloo) through the queue: the tiny model, the demo data, a
real engine subprocess that launches `accelerate launch … -m engine.dist_entry`."""

from __future__ import annotations

import json
import os
import signal

import pytest

from jobs import control
from jobs.engine_process import engine_status, start_engine
from jobs.store import open_store
from helpers.engine_process import wait_for, wait_parked, wait_state

pytest.importorskip("engine.train")

# 48 samples, no validation split, a constant learning rate and no warmup: the single-process
# run with batch 8 sees exactly the samples the two ranks with batch 4 see together, step by step.
SAME_DATA = [
    "data.val_ratio=0", "data.max_samples=48", "training.scheduler=constant", "training.warmup_ratio=0",
    "training.logging_steps=1", "training.keep_last=10", "method.lora.dropout=0",
]
DDP = ["distributed.strategy=ddp", "distributed.num_processes=2"]


def _losses(store, run_id) -> dict[int, float]:
    rows = store.metrics_since(run_id, names=["loss"])
    steps = [m.step for m in rows]
    assert len(steps) == len(set(steps)), f"a step reported twice: {steps}"
    return {m.step: m.value for m in rows}


def _one_stream(store, run_id) -> None:
    """Only rank 0 reports: every (step, metric) appears once."""
    keys = [(m.step, m.name) for m in store.metrics_since(run_id)]
    assert len(keys) == len(set(keys)), "metrics reported by more than one rank"


@pytest.mark.slow
def test_ddp_through_the_queue_matches_a_single_process_run(ws):
    steps = ["training.max_steps=6", "training.save_steps=3"]
    single = control.submit(ws, "demo", name="single", overrides=[*SAME_DATA, *steps, "training.batch_size=8"], start=False)
    ddp = control.submit(ws, "demo", name="ddp", overrides=[*SAME_DATA, *steps, "training.batch_size=4", *DDP], start=False)
    start_engine(ws)
    store = open_store(ws)
    done = [wait_state(ws, r.id, ("completed", "failed", "interrupted", "cancelled"), timeout=400) for r in (single, ddp)]
    assert [r.state for r in done] == ["completed", "completed"], [(r.error, r.advice) for r in done]

    run_dir = ws.run_dir(ddp.id)
    for name in ("accelerate.yaml", "launch.sh", "distributed.json", "rank-1.log", "preset.yaml"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "final" / "adapter_config.json").is_file()
    assert json.loads((run_dir / "distributed.json").read_text())["world_size"] == 2
    assert "=== rank 1 of 2" in (run_dir / "rank-1.log").read_text()

    _one_stream(store, ddp.id)
    assert [c.step for c in store.list_checkpoints(ddp.id)] == [3, 6]
    assert (store.get_run(ddp.id).step, store.get_run(ddp.id).total_steps) == (6, 6)
    # The checkpoint holds each rank's random state: both ranks wrote it at the same step.
    assert {p.name for p in (run_dir / "checkpoints" / "checkpoint-6").glob("rng_state_*.pth")} == {
        "rng_state_0.pth", "rng_state_1.pth"}

    reference, distributed = _losses(store, single.id), _losses(store, ddp.id)
    assert sorted(distributed) == sorted(reference) == [1, 2, 3, 4, 5, 6]
    for step in reference:
        assert distributed[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-4), step
    assert reference[6] < reference[1]  # it learned something, the same in both


@pytest.mark.slow
def test_cancel_a_ddp_run_midway_and_resume_it(ws):
    # Every rank waits after step 3 until the cancel arrives, then both stop after step 4.
    run = control.submit(ws, "demo", overrides=[*SAME_DATA, "training.max_steps=8", "training.save_steps=100",
                                                "training.batch_size=4", *DDP], park_at_step=3)
    store = open_store(ws)
    wait_parked(ws, run.id)
    control.cancel(ws, run.id)
    cancelled = wait_state(ws, run.id, ("cancelled", "failed", "completed"), timeout=120)
    assert cancelled.state == "cancelled", (cancelled.error, cancelled.advice)
    step = cancelled.step
    assert step == 4
    checkpoints = store.list_checkpoints(run.id)
    assert [c.step for c in checkpoints] == [step]
    checkpoint = ws.run_dir(run.id) / "checkpoints" / f"checkpoint-{step}"
    # Complete: both ranks stopped at this step boundary and wrote their part.
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()

    control.resume(ws, run.id)
    done = wait_state(ws, run.id, ("completed", "failed", "cancelled", "interrupted"), timeout=400)
    assert done.state == "completed", (done.error, done.advice)
    losses = _losses(store, run.id)
    assert sorted(losses) == list(range(1, 9))  # every step once: the resume went on from the checkpoint
    _one_stream(store, run.id)
    assert (ws.run_dir(run.id) / "final" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_sigterm_to_the_engine_checkpoints_a_ddp_run(ws):
    run = control.submit(ws, "demo", overrides=[*SAME_DATA, "training.max_steps=8", "training.save_steps=100",
                                                "training.batch_size=4", *DDP], park_at_step=2)
    store = open_store(ws)
    wait_parked(ws, run.id)
    os.kill(engine_status(ws).pid, signal.SIGTERM)
    interrupted = wait_state(ws, run.id, ("interrupted", "failed", "completed"), timeout=120)
    assert interrupted.state == "interrupted", (interrupted.error, interrupted.advice)
    wait_for(lambda: not engine_status(ws).running, 60, "the engine to exit")
    step = store.list_checkpoints(run.id)[-1].step
    assert step == interrupted.step == 3
    checkpoint = ws.run_dir(run.id) / "checkpoints" / f"checkpoint-{step}"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert "resume" in interrupted.advice


@pytest.mark.slow
def test_a_bad_dataset_fails_every_rank_with_one_clear_message(tmp_path, tiny_model_dir):
    """launch() directly (what the job body calls): the ranks' DataError comes back as the result."""
    from engine.distributed.launcher import launch
    from engine.sink import Sink
    from presets.loader import load_preset_text

    missing = tmp_path / "nowhere.json"
    preset = load_preset_text(
        f"name: bad\nmodel: {{path: {tiny_model_dir}}}\ndata: {{train_files: [{missing}]}}\n"
        "distributed: {strategy: ddp, num_processes: 2}\n", "bad.yaml")
    result = launch(preset, tmp_path / "run", Sink(), env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.status == "failed" and result.details["returncode"] != 0
    assert "nowhere.json" in result.error
    assert result.advice
