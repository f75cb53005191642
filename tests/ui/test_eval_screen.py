"""The Evals screen with Pilot: one row per evaluation, a bar per metric (base vs fine-tuned), samples."""

from __future__ import annotations

import json

from helpers.checkpoints import fake_trained_run
from textual.widgets import DataTable
from helpers.tui_app import async_test, make_app, screen_text, settle, until

from jobs.store import open_store
from tui.screens.evals import EvalsScreen, bars_text, metric_rows


def results(checkpoint, tuned_em, samples=3) -> dict:
    rows = []
    for i in range(samples):
        right = i < round(tuned_em * samples)
        rows.append({
            "index": i, "prompt": f"What is the capital of C{i}?", "reference": f"The capital of C{i} is X{i}.",
            "base": {"output": "uanosuba", "exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0, "bleu": 0.0},
            "finetuned": {"output": f"The capital of C{i} is X{i}." if right else "The capital of.",
                          "exact_match": 1.0 if right else 0.0, "token_f1": 1.0 if right else 0.57, "rouge_l": 0.7, "bleu": 40.0},
        })
    return {
        "status": "completed", "sides": ["base", "finetuned"],
        "target": {"run": "r", "checkpoint": checkpoint, "base_model": "/m", "adapter": "/a", "kind": "adapter"},
        "dataset": {"files": ["/d.json"], "split": "validation split", "rows": 6, "generation_samples": samples, "chat_template": "x"},
        "loss": {"base": {"eval_loss": 6.73, "perplexity": 837.0, "tokens": 90}, "finetuned": {"eval_loss": 1.37, "perplexity": 3.9, "tokens": 90}},
        "generation": {"base": {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0, "bleu": 0.3},
                       "finetuned": {"exact_match": tuned_em, "token_f1": 0.8, "rouge_l": 0.7, "bleu": 31.3}},
        "samples": rows,
    }


def test_metric_rows_and_bars():
    data = results(None, 2 / 3)
    rows = metric_rows(data)
    assert [r[0] for r in rows] == ["eval loss", "exact match", "token F1", "ROUGE-L", "BLEU (0–100)"]
    assert rows[0][3] is True and rows[0][2] == 6.73  # loss: lower is better, scaled to the larger side
    text = bars_text(data, {}).plain.splitlines()
    exact = next(line for line in text if line.startswith("exact match"))
    assert "0.0000" in exact and "0.6667" in exact
    assert exact.count("█") == 16  # fine-tuned 2/3 of a 24-cell bar; the base none
    assert "lower is better" in text[0]
    # At 80 columns: one line per metric, both values on it, nothing past the edge.
    narrow = bars_text(data, {}, width=78).plain.splitlines()
    assert all(len(line) <= 78 for line in narrow)
    assert "6.7300" in narrow[0] and "1.3700" in narrow[0] and narrow[0].startswith("eval loss ↓")
    assert narrow[-1] == "↓ lower is better"


@async_test
async def test_evals_screen_lists_results_with_bars_and_samples(workspace):
    run_id = fake_trained_run(workspace)
    store = open_store(workspace)
    job = store.create_run("eval", "eval-trained", "name: x\n")
    store.add_eval_result(job.id, {"target_run": run_id, "checkpoint": 20, "out_dir": "/o1", "result": results(20, 1 / 3)})
    # A result only on disk (its job's row was removed) is listed too.
    on_disk = workspace.run_dir(run_id) / "evals" / "r-old"
    on_disk.mkdir(parents=True)
    (on_disk / "results.json").write_text(json.dumps(results(None, 1.0, samples=2)))
    app = make_app(workspace)
    async with app.run_test(size=(140, 40)) as pilot:
        await settle(pilot)
        app.selected_run_id = run_id
        app.action_open_screen("evals")
        await until(pilot, lambda: isinstance(app.screen, EvalsScreen) and app.screen.records, "the evaluations")
        screen = app.screen
        listing = screen.query_one("#evals-list", DataTable)
        samples = screen.query_one("#evals-samples", DataTable)
        assert listing.row_count == 2
        text = screen_text(app)
        assert "2 evaluation(s)" in text and "checkpoint 20" in text and "final" in text
        # The newest evaluation is highlighted and drawn.
        shown = screen.records[listing.cursor_row].results
        assert samples.row_count == len(shown["samples"])
        for label in ("eval loss", "exact match", "token F1", "ROUGE-L", "BLEU (0–100)"):
            assert label in text
        assert "6.7300" in text and "1.3700" in text
        # Move to the other evaluation: its samples replace the table.
        other = 1 - listing.cursor_row
        listing.move_cursor(row=other)
        await settle(pilot)
        assert samples.row_count == len(screen.records[other].results["samples"])
        assert "The capital of C0 is X0." in screen_text(app)


@async_test
async def test_a_run_without_evaluations_says_how_to_get_one(workspace):
    run_id = fake_trained_run(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        await settle(pilot)
        app.selected_run_id = run_id
        app.action_open_screen("evals")
        await until(pilot, lambda: isinstance(app.screen, EvalsScreen) and app.screen.run is not None, "the screen")
        assert "has no evaluations yet" in screen_text(app)
        await pilot.press("k")
        await settle(pilot)
        from tui.screens.checkpoints import CheckpointsScreen

        assert isinstance(app.screen, CheckpointsScreen)


@async_test
async def test_answers_wrap_and_enter_reads_one_in_full(workspace):
    from tui.screens.detail import DetailScreen

    run_id = fake_trained_run(workspace)
    data = results(20, 1 / 3)
    long_answer = " ".join(f"word{i}" for i in range(60))  # longer than any cell shows
    data["samples"][0]["finetuned"]["output"] = long_answer
    store = open_store(workspace)
    job = store.create_run("eval", "eval-trained", "name: x\n")
    store.add_eval_result(job.id, {"target_run": run_id, "checkpoint": 20, "out_dir": "/o1", "result": data})
    app = make_app(workspace)
    async with app.run_test(size=(100, 40)) as pilot:
        await settle(pilot)
        app.selected_run_id = run_id
        app.action_open_screen("evals")
        await until(pilot, lambda: isinstance(app.screen, EvalsScreen) and app.screen.records, "the evaluations")
        screen = app.screen
        samples = screen.query_one("#evals-samples", DataTable)
        await settle(pilot)
        # Every column is on screen (the last one too), the answers wrap instead of running off the edge.
        assert samples.virtual_size.width <= samples.scrollable_content_region.width
        assert samples.rows[samples.coordinate_to_cell_key((0, 0)).row_key].height > 1
        assert "EM / F1" in screen_text(app).split("fine-tuned")[-1]
        samples.focus()
        samples.move_cursor(row=0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the sample in full")
        assert ("fine-tuned (exact match 1 · token F1 1.00)", long_answer) in app.screen.sections
        assert ("prompt", "What is the capital of C0?") in app.screen.sections
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen
