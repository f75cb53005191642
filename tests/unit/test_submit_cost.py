"""jobs/estimate.py: the duration a run should take, judged by the last run of the same preset here."""

from __future__ import annotations

from jobs.estimate import duration_estimate, pace_of_last_run, preset_name_of
from jobs.store import Store


def _run(store: Store, preset: str, *, name: str | None = None, state: str = "completed", step: int = 0,
         seconds: float = 0.0, dry_run: bool = False):
    run = store.create_run("train", name or preset, f"name: {preset}\ntraining: {{lr: 1e-4}}\n",
                           info={"dry_run": True} if dry_run else {})
    if state != "queued":
        store.set_state(run.id, "running")
        store.set_state(run.id, state)
    store.update_run(run.id, step=step, active_seconds=seconds)
    return store.get_run(run.id)


def test_the_newest_run_of_the_same_preset_sets_the_pace(workspace):
    store = Store(workspace.store_db)
    _run(store, "demo", step=100, seconds=200.0)  # older: 2 s/step
    _run(store, "other", step=10, seconds=1.0)
    newest = _run(store, "demo", name="quick-try", state="cancelled", step=40, seconds=20.0)  # 0.5 s/step
    _run(store, "demo", state="queued")  # nothing done yet: no pace
    _run(store, "demo", step=50, seconds=500.0, dry_run=True)  # trains nothing: no pace
    assert preset_name_of(newest) == "demo"
    pace, run = pace_of_last_run(store, "demo")
    assert (pace, run.id) == (0.5, newest.id)
    assert duration_estimate(store, "demo", 300) == (150.0, "quick-try: 0.50 s/step over 40 steps")


def test_no_earlier_run_no_estimate(workspace):
    store = Store(workspace.store_db)
    assert duration_estimate(store, "demo", 300) == (None, "no earlier run of demo here to time it by")
    _run(store, "demo", step=10, seconds=5.0)
    assert duration_estimate(store, "demo", None) == (None, "demo took 0.50 s/step; the steps are unknown")
