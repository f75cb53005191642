"""An eval job on a demo run, through the jobs path: submit → worker → jobs.targets → run_eval → store.

The run is the demo preset on a few capital-city rows, trained in full (the demo's LoRA on the
tiny random model learns the format too slowly for a test); the eval job runs on the rows it
trained on, so the fine-tune must beat the base on exact match and eval loss.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("engine.train")

from jobs import control  # noqa: E402
from jobs.store import open_store  # noqa: E402
from jobs.targets import eval_history, eval_preset_for_run  # noqa: E402
from jobs.worker import run_job  # noqa: E402

FAST_MEMORISING = [
    "method.name=full", "training.lr=3e-3", "training.scheduler=constant", "training.warmup_ratio=0",
    "training.max_steps=60", "training.logging_steps=10", "training.eval_steps=30", "training.save_steps=30",
    "data.val_ratio=0.25",
]


def run_now(ws, run):
    """What the engine does with a queued run, in this process: claim it, run the job."""
    store = open_store(ws)
    assert store.set_state(run.id, "running", expect="queued")
    run_job(ws, run.id)
    return store.get_run(run.id)


@pytest.mark.slow
def test_an_eval_job_shows_the_fine_tune_ahead_of_the_base(demo_workspace):
    from engine.demo_data import demo_rows

    ws = demo_workspace
    rows_file = ws.data_dir / "few_capitals.json"
    rows_file.write_text(json.dumps(demo_rows()[:8]))
    train = control.submit(ws, "demo", overrides=[f"data.train_files={rows_file}", *FAST_MEMORISING], start=False)
    trained = run_now(ws, train)
    assert trained.state == "completed", trained.error

    store = open_store(ws)
    preset = eval_preset_for_run(store, ws, trained.id, samples=8, data_file=str(rows_file), max_new_tokens=16)
    job = run_now(ws, control.submit(ws, preset, start=False))
    assert job.state == "completed", job.error

    history = eval_history(store, ws, trained.id)
    assert len(history) == 1, "the result is stored with the evaluated run"
    results = history[0].results
    out_dir = ws.run_dir(trained.id) / "evals" / job.id
    assert history[0].out_dir == str(out_dir)
    assert json.loads((out_dir / "results.json").read_text())["generation"] == results["generation"]
    assert (out_dir / "results.md").is_file()
    base, tuned = results["generation"]["base"], results["generation"]["finetuned"]
    assert tuned["exact_match"] > base["exact_match"], results["samples"]
    assert tuned["token_f1"] > base["token_f1"]
    assert results["loss"]["finetuned"]["eval_loss"] < results["loss"]["base"]["eval_loss"]
    # final/'s model card now carries the evaluation (model-index and its table)
    card = (ws.run_dir(trained.id) / "final" / "README.md").read_text()
    assert "model-index" in card and "## Evaluation" in card
    # The job's own metrics are in the store like a training run's.
    names = {m.name for m in store.metrics_since(job.id)}
    assert {"eval_loss", "base_eval_loss", "exact_match", "base_exact_match"} <= names
