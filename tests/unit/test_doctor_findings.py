"""The doctor's numbers and the life of a finding (issue 15): advice quotes the preset's learning
rate, not a rate logged mid-warmup; a finding that lasts is re-sent with its new figures and stays
one finding in the store, within an attempt and across attempts."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

import presets
from engine.doctor import finding_key
from engine.doctor.checkup import check_run
from engine.doctor.live import UPDATE_EVERY, LiveDoctor
from engine.doctor.rules import analyse
from jobs.db_sink import DbSink
from jobs.store import Store

PRESET_LR = 0.3  # the built-in demo-diverge preset: lr 0.3, 12 warmup steps
WARMUP = 12
# The loss falls while the rate warms up, then turns; the doctor flags it at step 9, where the
# highest logged rate is 0.225, three quarters of the preset's.
WARMUP_LOSS = [3.0, 2.6, 2.3, 2.1, 2.0, 2.05, 3.0, 6.0, 12.0]


def warmup_series() -> dict:
    steps = range(1, len(WARMUP_LOSS) + 1)
    return {"loss": list(zip(steps, WARMUP_LOSS)), "lr": [(s, PRESET_LR * s / WARMUP) for s in steps]}


def divergence(findings):
    found = [f for f in findings if f.rule == "divergence"]
    assert found, [f.title for f in findings]
    return found[0]


class _Training:
    precision = "bf16"
    max_grad_norm = 1.0
    scheduler = "constant_with_warmup"
    max_steps = None
    lr = PRESET_LR


class _Preset:
    training = _Training

    class doctor:  # noqa: N801 - mimics the preset's attribute layout
        stop_on_nan = True
        stop_on_divergence = False


# --------------------------------------------------------------------------- the learning rate quoted


def test_the_series_is_mid_warmup():
    assert max(v for _, v in warmup_series()["lr"]) == pytest.approx(0.225)


def test_advice_names_the_presets_lr_not_the_highest_logged_one():
    found = divergence(analyse(warmup_series(), precision="bf16", preset_lr=PRESET_LR))
    assert "training.lr: 0.3 → 0.06" in found.advice
    assert "0.225" not in found.advice and "0.045" not in found.advice


def test_without_a_preset_the_advice_says_it_quotes_the_highest_logged_rate():
    found = divergence(analyse(warmup_series(), precision="bf16"))
    assert "the highest logged rate was 0.225" in found.advice and "0.045" in found.advice
    assert "training.lr: 0.225" not in found.advice


def test_the_live_doctor_quotes_the_presets_lr():
    doctor = LiveDoctor(_Preset)
    reported = []
    series = warmup_series()
    for (step, loss), (_, lr) in zip(series["loss"], series["lr"]):
        reported += doctor.observe(step, {"loss": loss, "lr": lr})
    assert "training.lr: 0.3 → 0.06" in divergence(reported).advice


def _rows(series: dict) -> list[tuple[int, str, float]]:
    return [(step, name, value) for name, points in series.items() for step, value in points]


def test_a_stored_run_is_checked_against_its_frozen_presets_lr():
    frozen = (Path(presets.__file__).parent / "builtin" / "demo-diverge.yaml").read_text()
    found = divergence(check_run(_rows(warmup_series()), frozen).findings)
    assert "training.lr: 0.3 → 0.06" in found.advice


def test_a_frozen_preset_that_no_longer_validates_still_names_its_lr():
    frozen = "kind: train\nname: old\ntraining:\n  lr: 0.3\n  a_key_from_long_ago: 1\n"
    found = divergence(check_run(_rows(warmup_series()), frozen).findings)
    assert "training.lr: 0.3 → 0.06" in found.advice


def test_a_tiny_rate_mid_warmup_is_not_called_far_too_low_when_the_preset_says_otherwise():
    rng = random.Random(0)
    n = 40
    # Steps 1..40 of a 20000-step warmup to 2e-4: the logged rates stay under 1e-6.
    series = {"loss": [(s, 2.1 * math.exp(rng.gauss(0, 0.03))) for s in range(1, n + 1)],
              "lr": [(s, 2e-4 * s / 20000) for s in range(1, n + 1)]}
    assert "far too low" in [f for f in analyse(series, precision="bf16") if f.rule == "plateau"][0].advice
    plateau = [f for f in analyse(series, precision="bf16", preset_lr=2e-4) if f.rule == "plateau"]
    assert plateau and "far too low" not in plateau[0].advice


# --------------------------------------------------------------------------- a finding that lasts


def rising_loss(n_before: int = 20, n_after: int = 60, seed: int = 0) -> list[tuple[int, float]]:
    """Falls, turns, then keeps climbing for a long while (the run is not stopped)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_before + n_after):
        base = 2.5 * math.exp(-min(i, n_before) / 8) + 0.8
        if i > n_before:
            base *= 1 + 0.08 * (i - n_before)
        out.append((2 * (i + 1), base * math.exp(rng.gauss(0, 0.03))))
    return out


def live_divergence(loss) -> list[tuple[int, object]]:
    doctor = LiveDoctor(_Preset)
    sent = []
    for index, (step, value) in enumerate(loss):
        sent += [(index, f) for f in doctor.observe(step, {"loss": value, "lr": PRESET_LR}) if f.rule == "divergence"]
    return sent


def test_a_lasting_divergence_is_re_sent_with_its_new_figures():
    loss = rising_loss()
    sent = live_divergence(loss)
    assert len(sent) >= 3, [f.title for _, f in sent]
    first_index, first = sent[0]
    last_index, last = sent[-1]
    # Not frozen at the first report: the last one tells the loss near the end of the run.
    assert last.evidence["current_loss"] > 3 * first.evidence["current_loss"]
    assert len(loss) - 1 - last_index < UPDATE_EVERY
    assert last.step_end == loss[last_index][0]
    # Throttled: a re-send of the same episode at the same severity waits UPDATE_EVERY reports, and
    # says something new.
    for (before, a), (after, b) in zip(sent, sent[1:]):
        assert b.title != a.title
        if (a.severity, a.step_start) == (b.severity, b.step_start):
            assert after - before >= UPDATE_EVERY
    # One finding: its trend and its jump share a key.
    assert {finding_key(f) for _, f in sent} == {finding_key(first)}


def test_a_finding_whose_figures_do_not_change_is_not_re_sent():
    doctor = LiveDoctor(_Preset)
    for step in range(1, 6):
        doctor.observe(step, {"loss": 2.0})
    assert [f.rule for f in doctor.observe(6, {"loss": math.nan})] == ["nan"]
    for step in range(7, 7 + 3 * UPDATE_EVERY):
        assert doctor.observe(step, {"loss": math.nan}) == []


def test_a_lasting_plateau_is_re_sent_as_it_grows():
    rng = random.Random(1)
    doctor = LiveDoctor(None)
    sent = []
    for index, step in enumerate(range(10, 1210, 10)):
        found = doctor.observe(step, {"loss": 2.1 * math.exp(rng.gauss(0, 0.03)), "lr": 1e-8})
        sent += [(index, f) for f in found if f.rule == "plateau" and f.evidence.get("kind") == "stuck"]
    assert len(sent) >= 2
    assert sent[-1][1].step_end > sent[0][1].step_end
    assert all(b - a >= UPDATE_EVERY for (a, _), (b, _) in zip(sent, sent[1:]))


# --------------------------------------------------------------------------- through the sink into the store


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "tunebench.db", runs_dir=tmp_path / "runs")
    yield store
    store.close()


CLIMB_EVENTS = ("doctor: the loss diverges", "doctor: the loss trends up")


def _train(store: Store, run_id: str, loss) -> DbSink:
    """What the engine's callback does with the doctor's findings, without training."""
    sink = DbSink(store, run_id)
    doctor = LiveDoctor(_Preset)
    try:
        for step, value in loss:
            sink.metrics(step, {"loss": value, "lr": PRESET_LR})
            for finding in doctor.observe(step, {"loss": value, "lr": PRESET_LR}):
                sink.finding(finding.to_dict())
    finally:
        sink.close()
    return sink


def test_the_store_keeps_one_current_divergence_finding_per_run_across_attempts(store, tmp_path):
    run = store.create_run("train", "demo", "kind: train\nname: demo\n")
    (tmp_path / "runs" / run.id).mkdir(parents=True, exist_ok=True)
    loss = rising_loss()
    sent = live_divergence(loss)
    _train(store, run.id, loss)

    stored = [f for f in store.findings(run.id) if f["rule"] == "divergence"]
    assert len(stored) == 1
    assert stored[0]["title"] == sent[-1][1].title  # the latest figures …
    assert stored[0]["step_start"] == sent[0][1].step_start  # … from where it began
    assert store.get_run(run.id).findings == len(store.findings(run.id))
    doctor_events = [e for e in store.events_since(run.id) if e.text.startswith(CLIMB_EVENTS)]
    # In the events once per severity (a trend warning, then an error), not at every update.
    assert 1 <= len(doctor_events) <= 3 and len(sent) > len(doctor_events)

    # A resumed attempt: a fresh doctor reports the same condition again; no second finding, and no
    # event for its reports that are no worse than the stored one.
    count = len(store.findings(run.id))
    _train(store, run.id, loss)
    assert len(store.findings(run.id)) == count == store.get_run(run.id).findings
    again = [e for e in store.events_since(run.id) if e.text.startswith(CLIMB_EVENTS)][len(doctor_events):]
    assert [e.level for e in again] in ([], ["error"])  # the trend warning under the stored error is not news
    assert [f for f in store.findings(run.id) if f["rule"] == "divergence"][0]["title"] == sent[-1][1].title
