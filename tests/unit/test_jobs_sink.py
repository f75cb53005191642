"""DbSink: the engine's metrics into the run store, batched; stop requests back out."""

from __future__ import annotations

import inspect

import pytest

from jobs.db_sink import DbSink
from jobs.store import Store
from helpers.engine_process import wait_for


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "tunebench.db")


@pytest.fixture
def run(store):
    run = store.create_run("train", "demo", "kind: train\n")
    store.set_state(run.id, "running")
    return run


def test_db_sink_implements_the_engine_sink_interface():
    from engine.sink import Sink

    for name, member in inspect.getmembers(Sink, inspect.isfunction):
        if not name.startswith("_"):
            ours = getattr(DbSink, name, None)
            assert ours is not None, f"DbSink lacks Sink.{name}"
            assert list(inspect.signature(ours).parameters) == list(inspect.signature(member).parameters), name


def test_metrics_are_flushed_by_the_background_thread_and_update_the_run(store, run):
    sink = DbSink(store, run.id, flush_interval=0.05)
    sink.run_started({"total_steps": 100, "method": "lora"})
    sink.metrics(10, {"loss": 2.5, "lr": 1e-4, "note": "not a number"})
    rows = wait_for(lambda: store.metrics_since(run.id), 10, "the flushed batch")
    assert sorted((r.step, r.name) for r in rows) == [(10, "loss"), (10, "lr")]
    sink.metrics(20, {"loss": 2.0, "eval_loss": 2.2})
    sink.close()
    summary = store.get_run(run.id)
    assert (summary.step, summary.total_steps, summary.last_loss) == (20, 100, 2.0)
    assert (summary.best_eval_loss, summary.best_eval_step) == (2.2, 20)
    assert summary.info["method"] == "lora"


def test_a_resumed_run_starts_at_its_checkpoint_step(store, run):
    sink = DbSink(store, run.id, flush_interval=60)
    sink.run_started({"total_steps": 100, "start_step": 34, "method": "lora"})
    sink.close()
    event = store.events_since(run.id)[-1]
    assert event.step == 34 and event.text.startswith("training resumed at step 34")


def test_events_checkpoints_and_findings_flush_pending_metrics_first(store, run, tmp_path):
    sink = DbSink(store, run.id, flush_interval=60)  # only explicit flushes in this test
    sink.metrics(5, {"loss": 3.0})
    sink.event("info", "phase two", 5)
    assert store.metrics_since(run.id)[-1].step == 5
    folder = tmp_path / "checkpoint-5"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"0" * 1000)
    sink.checkpoint(5, str(folder), {"eval_loss": 1.5})
    row = store.list_checkpoints(run.id)[0]
    assert (row.step, row.size_bytes, row.metrics) == (5, 1000, {"eval_loss": 1.5})
    sink.checkpoint_removed(5, str(folder))
    assert store.list_checkpoints(run.id) == [] and folder.exists()  # the engine owns the files
    sink.finding({"rule": "nan_loss", "severity": "error", "title": "loss is NaN", "stop": True})
    assert store.get_run(run.id).findings == 1
    texts = [e.text for e in store.events_since(run.id)]
    assert "phase two" in texts and "checkpoint at step 5 (eval_loss 1.5)" in texts and "doctor: loss is NaN" in texts
    sink.close()


def test_should_stop_reads_the_store_request_and_interrupts(store, run):
    sink = DbSink(store, run.id)
    assert sink.should_stop() is None
    store.request_stop(run.id, "cancel")
    assert wait_for(sink.should_stop, 5, "the stop request") == "cancel"
    sink.interrupt()
    assert sink.should_stop() == "interrupt"
    sink.close()


def test_should_stop_when_the_engine_is_gone(store, run):
    sink = DbSink(store, run.id, parent_pid=-1)  # not our parent: as if the engine had died
    assert sink.should_stop() == "interrupt"
    sink.close()


def test_the_text_log_tells_the_story_with_about_a_hundred_progress_lines():
    import io

    from engine.sink import TextLogSink

    out = io.StringIO()
    log = TextLogSink(out)
    log.run_started({"total_steps": 1000, "method": "lora", "device": "cpu", "train_samples": 90,
                     "trainable_params": 250, "total_params": 1000})
    log.event("info", "loading model on cpu (fp32)")
    for step in range(1, 1001):
        log.metrics(step, {"loss": 2.0 - step / 1000, "lr": 1e-3})
    log.metrics(1000, {"eval_loss": 0.5, "eval_ppl": 1.65})
    log.event("warning", "loss spiked", step=500)
    log.finding({"rule": "plateau", "severity": "warning", "title": "loss flat", "advice": "raise training.lr"})
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]  # without the time stamp
    assert lines[0] == ("started: lora method, cpu device, 90 training samples, 1000 steps, "
                        "250 of 1,000 parameters trainable (25 %)")
    assert lines[1] == "loading model on cpu (fp32)"
    progress = [line for line in lines if line.startswith("step ") and ": loss " in line]
    assert len(progress) == 100
    assert progress[0] == "step 10/1000: loss 1.99, lr 0.001" and progress[-1] == "step 1000/1000: loss 1, lr 0.001"
    assert lines[-3:] == ["step 1000/1000: eval loss 0.5, perplexity 1.65", "warning: [step 500] loss spiked",
                          "doctor warning (plateau): loss flat → raise training.lr"]


def test_a_resumed_run_logs_progress_from_its_checkpoint_step():
    import io

    from engine.sink import TextLogSink

    out = io.StringIO()
    log = TextLogSink(out)
    log.run_started({"total_steps": 10, "start_step": 6})
    for step in range(7, 11):
        log.metrics(step, {"loss": 1.0})
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["resumed at step 6: 10 steps", "step 7/10: loss 1", "step 8/10: loss 1", "step 9/10: loss 1",
                     "step 10/10: loss 1"]
