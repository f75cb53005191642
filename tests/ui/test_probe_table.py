"""The probe-set table of the chat screen: every column on screen at 160 columns, long answers
wrapped, and each row readable in full with Enter. The model side is faked: rows are posted as the
probe worker posts them."""

from __future__ import annotations

from types import SimpleNamespace

from helpers.tui_app import async_test, make_app, screen_text, settle, until
from textual.widgets import DataTable

from tui.screens.chat import ProbeScreen
from tui.screens.detail import DetailScreen

LONG = " ".join(f"answer{i}" for i in range(15))  # wider than its column: wraps


def probe_row(i: int) -> SimpleNamespace:
    return SimpleNamespace(prompt=f"What is the capital of country number {i}, in one word?",
                           reference=f"The capital of country number {i} is City{i}.",
                           answers=[f"babble {i} " * 8, LONG if i == 0 else f"City{i}."],
                           exact=[0.0, 0.0 if i == 0 else 1.0], f1=[0.0, 0.25 if i == 0 else 1.0], stats=[None, None])


@async_test
async def test_probe_table_keeps_its_last_column_and_reads_rows_in_full(workspace, monkeypatch):
    monkeypatch.setattr(ProbeScreen, "_run", lambda self, count, prompts_file: None)  # no model
    session = SimpleNamespace(sides=[SimpleNamespace(label="base"), SimpleNamespace(label="fine-tuned")],
                              stop=lambda timeout=0: None)
    app = make_app(workspace)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        screen = ProbeScreen(session, SimpleNamespace(run_id=None), settings=None)
        app.push_screen(screen)
        await until(pilot, lambda: app.screen is screen, "the probe view")
        for i in range(3):
            screen.post_message(ProbeScreen.Row(i, probe_row(i)))
        await settle(pilot)
        table = screen.query_one(DataTable)
        assert table.row_count == 3
        assert table.virtual_size.width <= table.scrollable_content_region.width, "no column past the edge"
        text = screen_text(app)
        assert "EM/F1 fine-tuned" in text and "1 / 1.00" in text
        assert "…" not in text.split("EM/F1 fine-tuned")[1], "long answers wrap instead of being cut"
        assert table.rows[table.coordinate_to_cell_key((0, 0)).row_key].height > 1
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the row in full")
        assert ("fine-tuned (exact match 0 · token F1 0.25)", LONG) in app.screen.sections
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen
