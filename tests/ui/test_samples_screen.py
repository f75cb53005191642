"""The Samples screen with Pilot, on a real store and real per-sample loss files (written by
engine.sample_loss's own writer): the hardest samples, the rises since the base model, steps."""

from __future__ import annotations

import pytest
from helpers.tui_app import async_test, fill_store, make_app, screen_text, settle, until
from textual.widgets import DataTable

from engine.sample_loss import SampleLoss, write_losses
from tui.screens.samples import SamplesScreen

RUN = "r-fixed-0005"  # `demo`, running, in fill_store


def loss_files(workspace) -> None:
    run_dir = workspace.run_dir(RUN)
    capitals = ["France", "Peru", "Japan", "Kenya", "Chile", "Norway"]

    def at(losses: list[float]) -> list[SampleLoss]:
        return [SampleLoss("val", i, loss, 7, f"user: What is the capital of {c}? assistant: The capital of {c} is …",
                           f"The capital of {c} is …") for i, (c, loss) in enumerate(zip(capitals, losses))]

    write_losses(run_dir, 0, at([6.1, 6.3, 5.9, 6.0, 2.2, 6.4]))
    write_losses(run_dir, 25, at([1.2, 3.9, 0.8, 1.1, 2.9, 0.9]))
    write_losses(run_dir, 50, at([0.4, 3.6, 0.3, 0.5, 3.1, 0.2]))


async def open_samples(app, pilot) -> SamplesScreen:
    await settle(pilot)
    app.action_open_screen("samples", RUN)
    await until(pilot, lambda: isinstance(app.screen, SamplesScreen) and app.screen.view is not None, "the sample losses")
    await settle(pilot)
    return app.screen


@async_test
async def test_hardest_and_rose_at_the_last_step(workspace):
    fill_store(workspace)
    loss_files(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_samples(app, pilot)
        worst = screen.query_one("#samples-worst", DataTable)
        rose = screen.query_one("#samples-rose", DataTable)
        assert worst.row_count == 6 and rose.row_count == 1  # only the samples whose loss rose
        assert [str(c) for c in worst.get_row_at(0)[:3]] == ["val 1", "3.6000", "6.3000"]
        # Chile: 2.2 at the base, 3.1 now: the only rise.
        assert [str(c) for c in rose.get_row_at(0)[:4]] == ["val 4", "+0.9000", "2.2000", "3.1000"]
        text = screen_text(app)
        assert "step 50: 6 samples" in text and "Peru" in text

        await pilot.press("left_square_bracket")
        await until(pilot, lambda: screen.view.step == 25, "step 25")
        await settle(pilot)
        assert str(worst.get_row_at(0)[1]) == "3.9000"

        await pilot.press("enter")
        await settle(pilot)
        from tui.screens.detail import DetailScreen

        assert isinstance(app.screen, DetailScreen)
        assert "val sample 1" in screen_text(app)
        assert "capital of Peru" in screen_text(app) and "loss 3.9000" in screen_text(app)


@async_test
async def test_a_new_evaluation_shows_after_a_poll(workspace):
    fill_store(workspace)
    loss_files(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_samples(app, pilot)
        screen.reload()  # nothing new on disk: the same view stays
        await settle(pilot)
        assert screen.view.step == 50
        write_losses(workspace.run_dir(RUN), 75, [SampleLoss("val", 0, 9.5, 3, "late", "late")])
        screen.reload()  # what each poll of the app does
        await until(pilot, lambda: screen.view.step == 75, "the new step")
        assert "step 75: 1 samples" in screen_text(app)


@async_test
async def test_a_run_without_losses_says_how_to_get_them(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.action_open_screen("samples", RUN)
        await until(pilot, lambda: isinstance(app.screen, SamplesScreen) and "no per-sample losses" in screen_text(app),
                    "the message")
        assert "val_ratio" in screen_text(app)


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_samples_screen_snapshot(snap_compare, workspace, size):
    fill_store(workspace)
    loss_files(workspace)
    app = make_app(workspace)

    async def run_before(pilot):
        await open_samples(app, pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
