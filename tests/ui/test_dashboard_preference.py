"""The dashboard of a preference run (dpo, orpo, kto, simpo): TRL's rewards in two plots of their own,
shown for those runs only, fed from a real store through the engine's sink into it (jobs.db_sink)."""

from __future__ import annotations

import math

import pytest
from helpers.tui_app import FIXED_NOW, async_test, fill_store, make_app, screen_text, settle, until

from engine.doctor.rules import analyse, series_from_rows
from jobs.db_sink import DbSink
from jobs.store import Store
from tui.screens.dashboard import DashboardScreen
from tui.widgets.plot import MetricPlot

RUN_ID = "r-fixed-0101"
DPO_PRESET = "name: dpo-demo\nstage: dpo\nmodel: {path: /models/tiny}\ndata: {train_files: [/data/pairs.json]}\n"


def dpo_values(step: int) -> dict[str, float]:
    """One logging step of a DPO run whose chosen answers lose likelihood with the rejected ones."""
    learnt = 1 - math.exp(-step / 40)
    wiggle = 0.04 * math.sin(step / 3)
    margin = 2.0 * learnt + wiggle
    chosen = -0.9 * learnt + wiggle / 2
    return {"loss": math.log1p(math.exp(-margin)), "grad_norm": 1.2 * math.exp(-step / 90) + 0.3,
            "lr": 5e-6 * min(1.0, step / 15), "epoch": step / 60, "tokens_per_s": 900 + 20 * math.sin(step / 7),
            "tokens_seen": step * 256.0, "rewards/margins": margin, "rewards/accuracies": min(1.0, 0.5 + 0.45 * learnt + wiggle),
            "rewards/chosen": chosen, "rewards/rejected": chosen - margin,
            "logps/chosen": -110 + 10 * chosen, "logps/rejected": -118 + 10 * (chosen - margin)}


def write_metrics(store: Store, run_id: str, steps: range, *, eval_every: int = 30) -> None:
    """Through the engine's sink into the store, as a training run writes them."""
    sink = DbSink(store, run_id)
    for step in steps:
        sink.metrics(step, dpo_values(step))
        if step % eval_every == 0:
            sink.metrics(step, {"eval_loss": 0.55 - 0.002 * step, "eval_rewards/accuracies": 0.55 + 0.002 * step,
                                "eval_rewards/margins": 0.01 * step})
    sink.close()


def preference_store(workspace, preset: str = DPO_PRESET, *, state: str = "completed") -> Store:
    """One DPO run at step 120 (completed: of 120), its metrics, its doctor findings and its log."""
    store = Store(workspace.store_db)
    store.create_run("train", "dpo-demo", preset, run_id=RUN_ID)
    for step in ("running", "completed")[: 2 if state == "completed" else 1]:
        store.set_state(RUN_ID, step)
    times = {"started_at": FIXED_NOW - 900, "finished_at": FIXED_NOW - 660, "active_seconds": 240.0}
    if state != "completed":
        times = {"started_at": FIXED_NOW - 240, "active_seconds": 0.0}
    info = {"trainable_params": 98_304, "total_params": 1_180_000, "method": "lora", "precision": "fp32", "device": "cpu"}
    store.update_run(RUN_ID, step=120, total_steps=120 if state == "completed" else 200, gpu="cpu", info=info, **times)
    write_metrics(store, RUN_ID, range(5, 121, 5))
    sink = DbSink(store, RUN_ID)
    for finding in analyse(series_from_rows(store.metrics_since(RUN_ID)), stage="dpo", preset_lr=5e-6):
        sink.finding(finding.to_dict())
    sink.close()
    run_dir = workspace.run_dir(RUN_ID)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.log").write_text("".join(f"step {s}/120: loss {dpo_values(s)['loss']:.4f}\n" for s in range(5, 121, 5)))
    return store


async def open_dashboard(pilot, run_id: str = RUN_ID) -> DashboardScreen:
    app = pilot.app
    await settle(pilot)
    app.open_run(run_id)
    await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run is not None
                and app.screen.feed.reads >= 1, "the dashboard")
    await settle(pilot)
    return app.screen


def plot(screen, plot_id: str) -> MetricPlot:
    return screen.query_one(f"#plot-{plot_id}", MetricPlot)


@async_test
async def test_a_dpo_run_shows_its_rewards_in_their_own_plots(workspace):
    preference_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot)
        assert screen.query_one("#plots").has_class("preference")
        preference, rewards = plot(screen, "preference"), plot(screen, "rewards")
        assert preference.display and rewards.display
        assert [line.label for line in preference.lines] == ["margin", "acc", "eval acc"]  # no kl: not a KTO run
        assert [line.label for line in rewards.lines] == ["chosen", "rejected"]
        margin = preference.lines[0]
        assert margin.xs[0] == 5 and margin.xs[-1] == 120 and len(preference.lines[2].xs) == 4  # evals at 30 … 120
        assert rewards.lines[1].ys[-1] < rewards.lines[0].ys[-1] < 0
        values = dpo_values(120)
        assert preference.values["margin"] == f"{values['rewards/margins']:.4f}"
        assert f"{values['rewards/margins']:.4f}" in str(preference.border_subtitle)
        assert rewards.values == {"chosen": f"{values['rewards/chosen']:.4f}", "rejected": f"{values['rewards/rejected']:.4f}"}
        # The doctor's preference finding, written by the same sink, is in the findings panel.
        assert "pref_chosen" in screen_text(app)


@async_test
async def test_an_sft_run_has_no_preference_plots(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot, "r-fixed-0005")
        assert not screen.query_one("#plots").has_class("preference")
        assert not plot(screen, "preference").display and not plot(screen, "rewards").display
        assert plot(screen, "loss").lines  # the usual plots as before


@async_test
async def test_the_rewards_tell_a_preference_run_whose_preset_names_no_stage(workspace):
    preference_store(workspace, preset="")  # a run rebuilt from a folder without its preset
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot)
        assert screen.query_one("#plots").has_class("preference") and plot(screen, "rewards").lines


@async_test
async def test_new_preference_metrics_reach_the_plots(workspace):
    store = preference_store(workspace, state="running")
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_dashboard(pilot)
        assert plot(screen, "preference").lines[0].xs[-1] == 120
        write_metrics(store, RUN_ID, range(125, 131, 5))
        screen.poll()
        await until(pilot, lambda: plot(screen, "preference").lines[0].xs[-1] == 130, "the new margins")
        assert plot(screen, "rewards").lines[0].xs[-1] == 130


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_dashboard_preference_snapshot(snap_compare, workspace, size):
    preference_store(workspace)
    app = make_app(workspace)

    async def run_before(pilot):
        await open_dashboard(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
