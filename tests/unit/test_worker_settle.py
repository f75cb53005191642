"""How a job's outcome becomes the run's final state (jobs.worker.settle)."""

from __future__ import annotations

from engine.outcome import JobOutcome
from jobs.store import Store
from jobs.worker import settle


def test_a_full_disk_keeps_its_own_message_and_says_how_to_resume(tmp_path):
    store = Store(tmp_path / "tunebench.db")
    run = store.create_run("train", "demo", "name: demo\n", run_id="r-disk")
    outcome = JobOutcome("interrupted", stop_reason="disk_full",
                         error="checkpoint-3 would not fit: the filesystem mounted at /data has 4.0 KiB free",
                         advice="free space on /data, then resume from checkpoint-2")
    settled = settle(run, store, sink=None, outcome=outcome)
    assert settled.status == "interrupted"
    assert settled.error == outcome.error  # not the generic "the engine stopped"
    assert settled.advice.startswith("free space on /data") and "tunebench resume r-disk" in settled.advice
