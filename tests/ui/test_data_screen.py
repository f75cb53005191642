"""The Data screen with Pilot, on real data, a real tokenizer and a real store (no mocks): the
report, the rendered rows with their supervised tokens highlighted, next / previous / go to line /
search, a run's frozen preset and the preset picker; and engine.data.browse underneath."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers.tui_app import async_test, make_app, screen_text, settle, until
from textual.widgets import OptionList, Static

from tui.screens.data import SUPERVISED, DataScreen

RUN = "r-data-0001"
ROWS = [
    {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "What is the capital of Japan?", "input": "", "output": "The capital of Japan is Tokyo."},
    # Dropped when encoded: the prompt alone fills max_length, no answer token is left.
    {"instruction": "Repeat: " + " ".join(["lorem ipsum dolor"] * 30), "input": "", "output": "Done."},
    {"instruction": "What is the capital of Peru?", "input": "", "output": "The capital of Peru is Lima."},
    {"instruction": "What is the capital of Kenya?", "input": "", "output": "The capital of Kenya is Nairobi."},
    {"instruction": "Spell out a long list.", "input": "", "output": " ".join(["alpha beta gamma delta"] * 30)},
    {"instruction": "Say nothing.", "input": "", "output": ""},  # dropped when read: no answer to learn
]


def preset_text(workspace) -> str:
    return f"""\
name: browse
model:
  path: {workspace.models_dir / 'tiny'}
method:
  name: lora
data:
  train_files: {workspace.data_dir / 'rows.jsonl'}
  format: alpaca
  val_ratio: 0
  max_length: 64
training:
  epochs: 1
"""


@pytest.fixture
def data_workspace(workspace, tiny_model_dir):
    from jobs.store import open_store

    shutil.copytree(tiny_model_dir, workspace.models_dir / "tiny")
    workspace.data_dir.mkdir(parents=True, exist_ok=True)
    (workspace.data_dir / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (workspace.presets_dir / "browse.yaml").write_text(preset_text(workspace))
    open_store(workspace).create_run("train", "browse", preset_text(workspace), run_id=RUN)
    return workspace


def test_browser_renders_masks_searches_and_jumps(data_workspace):
    from engine.data.browse import open_browser
    from presets import load_preset

    preset = load_preset("browse", data_workspace.root)
    browser = open_browser(preset, cache_dir=data_workspace.cache_dir)
    assert len(browser) == 6 and browser.report.train_samples == 5
    first = browser.sample(0)
    assert first.where.endswith("rows.jsonl:1") and first.split == "train" and not first.dropped
    supervised = "".join(text for text, on in first.segments if on)
    assert "Paris" in supervised and "capital of France?" not in supervised
    assert 0 < first.supervised < first.tokens
    assert browser.sample(2).dropped  # the row with an empty answer, and why
    assert browser.sample(5).truncated
    assert browser.find("peru", 0) == 3 and browser.find("peru", 3) == 3 and browser.find("zanzibar", 0) is None
    assert browser.find("capital", 0, forward=False) == 4
    assert browser.at_line(4) == 3 and browser.at_line(99) is None


async def open_run_data(app, pilot) -> DataScreen:
    await settle(pilot)
    app.action_open_screen("data", RUN)
    await until(pilot, lambda: isinstance(app.screen, DataScreen) and app.screen.sample is not None, "the data")
    await settle(pilot)
    return app.screen


def shown_row(screen) -> str:
    return str(screen.query_one("#data-sample-head", Static).content)


@async_test
async def test_a_runs_data_report_and_rows(data_workspace):
    app = make_app(data_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_run_data(app, pilot)
        text = screen_text(app)
        assert "run browse (r-data-0001): 5 training / 0 validation samples" in text
        assert "dropped" in text and "rows.jsonl" in text and "tokens per sample" in text
        assert "row 1 of 6 · rows.jsonl:1 · train" in shown_row(screen)
        rendered = screen.query_one("#data-sample", Static).content  # the Rich Text the screen drew
        highlighted = "".join(rendered.plain[span.start:span.end] for span in rendered.spans if span.style == SUPERVISED)
        assert "Paris" in highlighted and "France?" not in highlighted

        await pilot.press("n", "n")
        await settle(pilot)
        assert "row 3 of 6" in shown_row(screen) and "not trained on" in shown_row(screen)
        assert "dropped:" in screen_text(app)
        await pilot.press("p")
        await settle(pilot)
        assert "row 2 of 6" in shown_row(screen)

        await pilot.press("g", "5", "enter")
        await settle(pilot)
        assert "row 5 of 6 · rows.jsonl:5" in shown_row(screen)

        await pilot.press("slash", *"peru", "enter")
        await settle(pilot)
        assert "row 4 of 6" in shown_row(screen)
        await pilot.press("escape")  # closes the search box, not the screen
        await settle(pilot)
        assert isinstance(app.screen, DataScreen)


@async_test
async def test_without_a_run_a_preset_is_picked(data_workspace):
    app = make_app(data_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.selected_run_id = None
        app.action_open_screen("data")
        await until(pilot, lambda: isinstance(app.screen, DataScreen), "the screen")
        await settle(pilot)
        screen = app.screen
        presets = screen.query_one("#data-presets", OptionList)
        index = next(i for i in range(presets.option_count) if presets.get_option_at_index(i).id == "browse")
        presets.highlighted = index
        await pilot.press("enter")
        await until(pilot, lambda: screen.sample is not None, "the preset's data")
        assert "preset browse: 5 training" in screen_text(app)


@async_test
async def test_a_preset_whose_data_is_missing_says_so(data_workspace):
    (data_workspace.data_dir / "rows.jsonl").unlink()
    app = make_app(data_workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.action_open_screen("data", RUN)
        await until(pilot, lambda: isinstance(app.screen, DataScreen) and "rows.jsonl" in screen_text(app), "the message")
        assert "Traceback" not in screen_text(app) and app.screen.browser is None


@pytest.mark.parametrize("size", [(120, 40), (80, 24)], ids=["120x40", "80x24"])
def test_data_screen_snapshot(snap_compare, data_workspace, size):
    app = make_app(data_workspace)

    async def run_before(pilot):
        await open_run_data(app, pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)
