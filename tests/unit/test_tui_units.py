"""The TUI's pure parts: formatting, metric series and downsampling, YAML edits, the dashboard feed."""

from __future__ import annotations

import math

import pytest
import yaml

from tui import format as fmt
from tui.preset_yaml import (
    FORM_FIELDS,
    EditError,
    copy_of,
    field_text,
    origin_of,
    parse_field,
    plan_edit,
    set_value,
)
from tui.series import MinMaxBuckets, Series, SeriesSet, recent_pace

# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (3720, "1h02m"),
                                           (183600, "2d03h"), (None, "—"), (-1, "—"), (math.inf, "—")])
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


def test_numbers_sizes_and_counts():
    assert fmt.number(0.123456) == "0.1235"
    assert fmt.number(3.2e-5) == "3.20e-05"
    assert fmt.number(float("nan")) == "NaN"
    assert fmt.size(3.5 * 2**30) == "3.5 GiB"
    assert fmt.size(512) == "512 B"
    assert fmt.count(1_180_000) == "1.2M"
    assert fmt.count(98_304) == "98.3k"
    assert fmt.gib(24 * 2**30) == "24.0"


def test_bar_and_eta():
    assert fmt.bar(0.0, 8) == "░" * 8
    assert fmt.bar(1.0, 8) == "█" * 8
    assert fmt.bar(0.5, 8) == "████░░░░"
    assert len(fmt.bar(0.37, 8)) == 8
    assert fmt.eta(100, 300, 50.0) == pytest.approx(100.0)  # 0.5 s/step, 200 steps left
    assert fmt.eta(300, 300, 50.0) == 0.0
    assert fmt.eta(0, 300, 50.0) is None


# --------------------------------------------------------------------------- series


def test_min_max_buckets_keep_spikes_and_stay_bounded():
    buckets = MinMaxBuckets(max_points=100)
    for step in range(100_000):
        value = 1.0 if step != 54_321 else 50.0  # one spike in a flat line
        buckets.add(float(step), value)
    xs, ys = buckets.points()
    assert len(xs) <= 100
    assert max(ys) == 50.0, "a spike must survive downsampling"
    assert xs == sorted(xs)
    assert xs[0] == 0.0 and xs[-1] >= 99_000


def test_series_keeps_every_point_and_smooths_without_bias():
    series = Series(max_points=50, smoothing=0.9)
    for step in range(1, 1001):
        series.append(step, 2.0, time=step * 0.5)
    series.append(1001, float("nan"), time=500.5)
    assert len(series) == 1001  # NaN kept in the data…
    xs, ys = series.points(smoothed=False)
    assert len(xs) <= 50 and all(math.isfinite(y) for y in ys)  # …but not drawn
    _, smooth = series.points(smoothed=True)
    assert smooth[0] == pytest.approx(2.0), "debiased EMA: no drag towards 0 at the start"
    assert series.minimum() == (1.0, 2.0)


def test_recent_pace_uses_the_latest_reports():
    series = Series()
    for step in range(0, 200, 10):  # 10 steps every 5 s, then twice as fast
        series.append(step, 1.0, time=step / 2)
    for step in range(200, 400, 10):
        series.append(step, 1.0, time=100 + (step - 200) / 4)
    pace = recent_pace(series, total_steps=1000, window=5)
    assert pace.steps_per_s == pytest.approx(4.0)
    assert pace.seconds_left == pytest.approx((1000 - 390) / 4.0)


def test_recent_pace_leaves_out_the_time_before_a_resume():
    # 1 step/s, then 600 s cancelled and queued, then 1 step/s again from the resume at t=700
    series = Series()
    for step in range(1, 101):
        series.append(step, 1.0, time=float(step))
    for step in range(101, 111):
        series.append(step, 1.0, time=700.0 + (step - 100))
    assert recent_pace(series, total_steps=1000).steps_per_s < 0.1  # what the window across the gap says
    pace = recent_pace(series, total_steps=1000, since=700.0)
    assert pace.steps_per_s == pytest.approx(1.0)
    assert pace.seconds_left == pytest.approx(890.0)
    assert recent_pace(series, total_steps=1000, since=710.5) is None  # one report since: no pace yet


def test_series_set_reads_each_row_once():
    class Row:
        def __init__(self, id, step, name, value):
            self.id, self.step, self.name, self.value, self.time = id, step, name, value, 0.0

    rows = [Row(1, 5, "loss", 2.0), Row(2, 5, "lr", 1e-3), Row(3, 10, "loss", 1.5)]
    series = SeriesSet()
    assert series.add_rows(rows) == 3
    assert series.add_rows(rows) == 0  # a re-read of the same rows adds nothing
    assert series.last_id == 3
    assert series.last("loss") == 1.5
    assert series.points("loss") == ([5.0, 10.0], [2.0, 1.5])


# --------------------------------------------------------------------------- YAML edits

PRESET = """\
# my preset
name: mine
model:
  path: /models/x  # the base
method:
  name: lora
data:
  train_files:
    - a.json
    - b.json
  format: alpaca
training:
  lr:
  epochs: 3
"""


def test_set_value_replaces_only_the_value_and_keeps_comments():
    text = set_value(PRESET, ("model", "path"), "/models/y")
    assert "  path: /models/y  # the base\n" in text
    assert text.startswith("# my preset\n")
    text = set_value(text, ("training", "lr"), 1e-4)
    assert yaml.safe_load(text)["training"] == {"lr": 1e-4, "epochs": 3}


def test_set_value_on_a_block_list_and_on_missing_sections():
    text = set_value(PRESET, ("data", "train_files"), "c.json")
    assert yaml.safe_load(text)["data"] == {"train_files": "c.json", "format": "alpaca"}
    text = set_value(text, ("method", "lora", "r"), 8)
    text = set_value(text, ("training", "batch_size"), 4)
    text = set_value(text, ("doctor", "stop_on_nan"), False)
    data = yaml.safe_load(text)
    assert data["method"] == {"name": "lora", "lora": {"r": 8}}
    assert data["training"]["batch_size"] == 4
    assert data["doctor"] == {"stop_on_nan": False}


def test_plan_edit_refuses_what_it_cannot_do_cleanly():
    with pytest.raises(EditError):
        plan_edit("name: [unclosed\n", ("name",), "x")
    with pytest.raises(EditError):
        plan_edit("name: a\nmethod: lora\n", ("method", "name"), "dora")  # method is a scalar, not a section


def test_form_fields_round_trip():
    lr = next(f for f in FORM_FIELDS if f.path == ("training", "lr"))
    files = next(f for f in FORM_FIELDS if f.path == ("data", "train_files"))
    assert parse_field(lr, "1e-4") == 1e-4
    assert parse_field(lr, "abc") == "abc"  # kept as text: the validator names the key
    assert parse_field(files, "a.json, b.json") == ["a.json", "b.json"]
    assert parse_field(files, "a.json") == "a.json"
    assert field_text(files, ["a.json", "b.json"]) == "a.json, b.json"


def test_copy_remembers_the_builtin():
    copy = copy_of(PRESET, "mine-2", "demo")
    assert origin_of(copy) == "demo"
    assert yaml.safe_load(copy)["name"] == "mine-2"
    assert origin_of(copy_of(copy, "mine-3", "demo-diverge")) == "demo-diverge"  # one origin line only
    assert copy_of(copy, "mine-3", "demo-diverge").count("# based on built-in preset:") == 1


# --------------------------------------------------------------------------- feed


def test_feed_reads_only_new_rows(workspace):
    from helpers.tui_app import fill_store
    from tui.backend import Backend
    from tui.feed import DashboardFeed

    store = fill_store(workspace)
    reads = []
    original = store.metrics_since

    def spy(run_id, after_id=0, names=None):
        reads.append(after_id)
        return original(run_id, after_id, names)

    store.metrics_since = spy
    feed = DashboardFeed(Backend(workspace, store_override=store), "r-fixed-0005", max_points=100)
    first = feed.read()
    assert first.plots["loss"][0].last == pytest.approx(store.get_run("r-fixed-0005").last_loss)
    assert "run.log" not in first.log_text and "step 120" in first.log_text
    assert first.findings and first.findings[0]["rule"] == "plateau"
    second = feed.read()
    assert second.rows_read == 0 and second.plots is None and second.findings is None and second.log_text == ""
    store.add_finding("r-fixed-0005", {"rule": "plateau", "severity": "warning", "title": "eval loss flat for 5 evaluations",
                                       "advice": "lower the learning rate or stop early", "step_start": 50,
                                       "step_end": 120, "evidence": {}, "stop": False})
    updated = feed.read()  # the same finding, new figures: the count is unchanged, the panel is not
    assert [f["title"] for f in updated.findings] == ["eval loss flat for 5 evaluations"]
    assert feed.read().findings is None
    store.add_metrics("r-fixed-0005", [(125, "loss", 0.5, 0.0)])
    third = feed.read()
    assert third.rows_read == 1
    assert third.plots["loss"][0].last == 0.5
    assert reads[0] == 0 and reads[1] == reads[2] > 0, "each poll asks only for rows after the last seen id"
    figures = dict(third.figures)
    assert figures["trainable"] == "98.3k / 1.2M (8.3%)"
    assert figures["best eval"].endswith("@ step 100")


@pytest.mark.parametrize("name", ["café", "../evil", ".hidden", "a" * 65, "mine.yaml"])
def test_the_name_dialog_refuses_what_the_cli_refuses(name):
    from presets.loader import PresetError, check_name

    from tui.screens.modals import name_problem

    with pytest.raises(PresetError):
        check_name(name)
    assert name_problem(name)


def test_the_name_dialog_takes_a_good_name():
    from tui.screens.modals import name_problem

    assert name_problem("my-demo_v2.1") is None and name_problem("") == "type a name"
