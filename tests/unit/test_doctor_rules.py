"""The doctor's metric rules on synthetic series: each rule fires on its pattern, and noisy healthy
curves (many seeds, several noise levels and shapes) never produce anything above info."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import pytest

from engine.doctor.live import UPDATE_EVERY, LiveDoctor
from engine.doctor.rules import analyse, rolling_median, series_from_jsonl, worst_severity

EVERY = 10  # logging_steps of the synthetic runs


def steps(n: int) -> list[int]:
    return [(i + 1) * EVERY for i in range(n)]


def cosine_lr(n: int, peak: float = 2e-4, warmup: float = 0.05) -> list[tuple[int, float]]:
    total = n * EVERY
    warm = max(1, int(total * warmup))
    out = []
    for s in steps(n):
        lr = peak * s / warm if s < warm else peak * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        out.append((s, lr))
    return out


def decay(n: int, *, seed: int, noise: float, start: float = 2.5, floor: float = 0.8, tau: float = 25.0):
    """A noisy exponential decay: multiplicative log-normal noise, as logged losses look."""
    rng = random.Random(seed)
    return [(s, (start * math.exp(-i / tau) + floor) * math.exp(rng.gauss(0, noise))) for i, s in enumerate(steps(n))]


def healthy_grads(n: int, *, seed: int):
    rng = random.Random(seed + 1000)
    return [(s, (1.2 * math.exp(-i / 40) + 0.3) * math.exp(rng.gauss(0, 0.25))) for i, s in enumerate(steps(n))]


def healthy_run(n: int, *, seed: int, noise: float, **shape) -> dict:
    return {"loss": decay(n, seed=seed, noise=noise, **shape), "grad_norm": healthy_grads(n, seed=seed), "lr": cosine_lr(n)}


def above_info(findings):
    return [f for f in findings if f.severity != "info"]


def rules(findings, severity_at_least="warning"):
    rank = {"info": 0, "warning": 1, "error": 2}
    return {f.rule for f in findings if rank[f.severity] >= rank[severity_at_least]}


# --------------------------------------------------------------------------- healthy curves


SHAPES = {
    "pretrained": dict(start=1.5, floor=0.9, tau=30.0),  # a fine-tune of a real model: small descent
    "from-scratch": dict(start=6.9, floor=0.03, tau=12.0),  # the tiny model memorising: down to ~0
    "typical": dict(start=2.5, floor=0.8, tau=25.0),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("noise", [0.03, 0.08, 0.15])
def test_noisy_healthy_curves_produce_nothing_above_info(shape, noise):
    for seed in range(10):
        for n in (10, 30, 120):
            run = healthy_run(n, seed=seed, noise=noise, **SHAPES[shape])
            findings = analyse(run, precision="bf16", max_grad_norm=1.0, total_steps=n * EVERY)
            assert above_info(findings) == [], (seed, n, [f.title for f in above_info(findings)])


def test_healthy_curves_stay_quiet_at_every_point_of_a_live_run():
    # Live, the rules see every prefix of the run: many more chances for a false alarm.
    for seed in range(6):
        run = healthy_run(60, seed=seed, noise=0.1, **SHAPES["typical"])
        eval_rng = random.Random(seed)
        doctor = LiveDoctor(None)
        doctor.max_grad_norm = 1.0
        for i, step in enumerate(steps(60)):
            values = {name: run[name][i][1] for name in run}
            if i % 10 == 9:  # a healthy eval loss: decreasing, then flat
                values["eval_loss"] = (1.6 * math.exp(-i / 25) + 1.0) * math.exp(eval_rng.gauss(0, 0.005))
            reported = doctor.observe(step, values)
            assert above_info(reported) == [], (seed, step, [f.title for f in reported])


def test_a_healthy_run_may_mention_clipping_only_as_info():
    run = healthy_run(60, seed=1, noise=0.05)
    findings = analyse(run, precision="bf16", max_grad_norm=1.0)
    clipping = [f for f in findings if f.rule == "clipping"]
    assert clipping and all(f.severity == "info" for f in clipping)
    assert 0.2 <= clipping[0].evidence["share"] < 0.9


# --------------------------------------------------------------------------- NaN / Inf


def test_nan_loss_is_an_error_at_its_step():
    run = healthy_run(30, seed=0, noise=0.05)
    run["loss"][20] = (run["loss"][20][0], math.nan)
    findings = analyse(run, precision="bf16")
    nan = [f for f in findings if f.rule == "nan"]
    assert len(nan) == 1 and nan[0].severity == "error"
    assert nan[0].step_start == steps(30)[20]
    assert nan[0].evidence["nonfinite_loss"] == 1
    assert "last_finite_loss" in nan[0].evidence
    assert findings[0].rule == "nan"  # errors come first


def test_nan_advice_depends_on_precision():
    run = healthy_run(20, seed=0, noise=0.05)
    run["loss"][-1] = (run["loss"][-1][0], math.inf)
    fp16 = [f for f in analyse(run, precision="fp16") if f.rule == "nan"][0]
    bf16 = [f for f in analyse(run, precision="bf16") if f.rule == "nan"][0]
    assert "bf16" in fp16.advice and "overflow" in fp16.advice
    assert "lower the learning rate" in bf16.advice.lower() and "overflow" not in bf16.advice
    assert "data" in bf16.advice


def test_a_few_inf_grad_norms_under_fp16_are_the_loss_scaler_at_work():
    run = healthy_run(40, seed=0, noise=0.05)
    for index in (1, 3):
        run["grad_norm"][index] = (run["grad_norm"][index][0], math.inf)
    findings = analyse(run, precision="fp16")
    nan = [f for f in findings if f.rule == "nan"]
    assert [f.severity for f in nan] == ["info"]
    # …but the same under bf16 is an error: nothing skips those steps.
    assert [f.severity for f in analyse(run, precision="bf16") if f.rule == "nan"] == ["error"]


def test_persistent_inf_grad_norm_under_fp16_is_an_error():
    run = healthy_run(20, seed=0, noise=0.05)
    for index in range(15, 20):
        run["grad_norm"][index] = (run["grad_norm"][index][0], math.inf)
    assert [f.severity for f in analyse(run, precision="fp16") if f.rule == "nan"] == ["error"]


# --------------------------------------------------------------------------- divergence


def diverging(n_before: int, n_after: int, *, seed: int, noise: float, growth: float):
    rng = random.Random(seed)
    out = []
    for i, s in enumerate(steps(n_before + n_after)):
        base = 2.5 * math.exp(-min(i, n_before) / 25) + 0.8
        if i > n_before:
            base *= math.exp(growth * (i - n_before))
        out.append((s, base * math.exp(rng.gauss(0, noise))))
    return out


@pytest.mark.parametrize("growth", [0.1, 0.3])
def test_divergence_is_flagged_within_a_few_logging_steps_of_the_turn(growth):
    turn = 30
    for seed in range(5):
        loss = diverging(turn, 20, seed=seed, noise=0.08, growth=growth)
        flagged_at = None
        for k in range(turn, len(loss)):
            found = [f for f in analyse({"loss": loss[: k + 1]}, precision="bf16") if f.rule == "divergence"]
            if found:
                flagged_at = k
                break
        assert flagged_at is not None
        assert flagged_at - turn <= (5 if growth >= 0.3 else 8), (seed, flagged_at - turn)
        assert abs(found[0].step_start - steps(60)[turn]) <= 6 * EVERY  # the turn is named
        assert found[0].severity in ("warning", "error")
        assert "lower the learning rate" in found[0].advice.lower()


def test_divergence_above_the_starting_level_is_an_error_and_names_the_lr():
    loss = diverging(10, 15, seed=1, noise=0.05, growth=0.3)
    run = {"loss": loss, "lr": [(s, 0.5) for s, _ in loss]}
    found = [f for f in analyse(run, precision="bf16") if f.rule == "divergence"][0]
    assert found.severity == "error"
    assert "0.1" in found.advice  # 0.5 ÷ 5
    assert found.evidence["current_loss"] > found.evidence["early_loss"]


def test_a_slow_steady_climb_is_flagged_as_a_trend():
    rng = random.Random(0)
    loss = [(s, 1.0 * math.exp(0.01 * i) * math.exp(rng.gauss(0, 0.02))) for i, s in enumerate(steps(40))]
    found = [f for f in analyse({"loss": loss}, precision="bf16") if f.rule == "divergence"]
    assert found and found[0].evidence["kind"] in ("trend", "rise")


# --------------------------------------------------------------------------- spikes


def test_isolated_spikes_are_flagged_with_their_steps():
    loss = decay(60, seed=3, noise=0.05)
    for index in (20, 35, 50):
        loss[index] = (loss[index][0], loss[index][1] * 3.5)
    found = [f for f in analyse({"loss": loss}, precision="bf16") if f.rule == "spikes"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert found[0].evidence["count"] == 3
    assert found[0].evidence["steps"] == [steps(60)[i] for i in (20, 35, 50)]
    assert found[0].evidence["ratio"] > 3
    assert "clip" in found[0].advice


def test_one_modest_spike_is_only_info_and_a_lasting_jump_is_not_a_spike():
    loss = decay(60, seed=4, noise=0.05)
    loss[30] = (loss[30][0], loss[30][1] * 2.0)
    assert [f.severity for f in analyse({"loss": loss}, precision="bf16") if f.rule == "spikes"] == ["info"]
    # A level shift that stays up is a divergence, not a spike.
    shifted = decay(60, seed=4, noise=0.05)
    shifted = shifted[:30] + [(s, v * 3) for s, v in shifted[30:]]
    found = analyse({"loss": shifted}, precision="bf16")
    assert "spikes" not in rules(found, "info") and "divergence" in rules(found)


# --------------------------------------------------------------------------- plateau


def test_zero_learning_rate_is_a_plateau_error():
    rng = random.Random(0)
    n = 12
    loss = [(s, 6.93 * math.exp(rng.gauss(0, 0.01))) for s in steps(n)]
    found = [f for f in analyse({"loss": loss, "lr": [(s, 0.0) for s in steps(n)]}, precision="bf16") if f.rule == "plateau"]
    assert found and found[0].severity == "error"
    assert found[0].evidence["kind"] == "zero_lr"
    assert "training.lr" in found[0].advice


def test_zero_lr_is_flagged_after_three_reports_even_before_the_loss_says_anything():
    series = {"lr": [(s, 0.0) for s in steps(3)], "loss": [(s, 2.0) for s in steps(3)]}
    assert "plateau" in rules(analyse(series, precision="bf16"), "error")
    # The end of a decaying schedule (lr reaching 0) is normal.
    tail = cosine_lr(40)
    tail[-1] = (tail[-1][0], 0.0)
    run = healthy_run(40, seed=0, noise=0.05)
    run["lr"] = tail
    assert above_info(analyse(run, precision="bf16")) == []


def test_a_flat_loss_with_a_tiny_lr_is_a_plateau():
    for seed in range(5):
        rng = random.Random(seed)
        doctor = LiveDoctor(None)
        reported = []
        for s in steps(60):
            # An LR of 1e-8 moves nothing measurable: a flat loss with batch-to-batch noise.
            reported += doctor.observe(s, {"loss": 2.1 * math.exp(rng.gauss(0, 0.03)), "lr": 1e-8})
        found = [f for f in reported if f.rule == "plateau" and f.severity == "warning"]
        assert found and found[0].evidence["kind"] == "stuck", seed
        assert "too low" in found[0].advice


def test_a_loss_that_flattens_while_the_lr_is_still_high_is_only_info():
    run = healthy_run(90, seed=2, noise=0.03, tau=5.0)
    run["lr"] = [(s, 2e-4) for s in steps(90)]  # constant schedule
    found = [f for f in analyse(run, precision="bf16") if f.rule == "plateau"]
    assert [f.severity for f in found] == ["info"] and found[0].evidence["kind"] == "stalled"


# --------------------------------------------------------------------------- oscillation


def test_oscillation_without_progress():
    rng = random.Random(5)
    loss = [(s, (1.0 if i % 2 else 2.2) * math.exp(rng.gauss(0, 0.05))) for i, s in enumerate(steps(40))]
    found = [f for f in analyse({"loss": loss}, precision="bf16") if f.rule == "oscillation"]
    assert found and found[0].severity == "warning"
    assert found[0].evidence["swing_rel"] > 0.4
    assert "batch" in found[0].advice


def test_a_noisy_loss_that_still_goes_down_is_not_oscillation():
    rng = random.Random(6)
    loss = [(s, 6.0 * math.exp(-i / 8) * (1.0 if i % 2 else 1.6) * math.exp(rng.gauss(0, 0.05)) + 0.5)
            for i, s in enumerate(steps(20))]
    assert "oscillation" not in rules(analyse({"loss": loss[:16]}, precision="bf16"), "info")


# --------------------------------------------------------------------------- overfitting


def overfitting_run(n_evals: int, best_eval: int, eval_every: int = 5):
    """Train loss keeps falling; eval loss is a U with its minimum at evaluation `best_eval`."""
    n = n_evals * eval_every
    run = healthy_run(n, seed=0, noise=0.05, start=2.5, floor=0.05, tau=15)
    rng = random.Random(1)
    run["eval_loss"] = [
        (steps(n)[(k + 1) * eval_every - 1], (1.0 + 0.02 * (k - best_eval) ** 2) * math.exp(rng.gauss(0, 0.003)))
        for k in range(n_evals)
    ]
    run["epoch"] = [(s, s / 100) for s in steps(n)]
    return run


def test_overfitting_is_flagged_near_the_eval_minimum_with_the_best_step():
    run = overfitting_run(12, best_eval=4)
    best_step = run["eval_loss"][4][0]
    flagged_after = None
    for k in range(3, 13):
        partial = dict(run, eval_loss=run["eval_loss"][:k])
        partial["loss"] = [(s, v) for s, v in run["loss"] if s <= partial["eval_loss"][-1][0]]
        found = [f for f in analyse(partial, precision="bf16") if f.rule == "overfitting" and f.severity == "warning"]
        if found:
            flagged_after = k - 1 - 4  # evaluations after the best
            break
    assert flagged_after is not None and flagged_after <= 3
    assert found[0].evidence["best_step"] == best_step
    assert found[0].step_start == best_step
    assert f"step {best_step}" in found[0].advice
    assert found[0].evidence["train_loss_now"] < found[0].evidence["train_loss_at_best"]
    assert "epoch_at_best" in found[0].evidence


def test_eval_rising_with_train_rising_is_not_overfitting():
    run = overfitting_run(10, best_eval=3)
    run["loss"] = [(s, 0.5 + s / 200) for s, _ in run["loss"]]  # train climbs too: that is divergence
    assert "overfitting" not in rules(analyse(run, precision="bf16"), "warning")


def test_a_wobbling_flat_eval_loss_after_a_dip_is_not_overfitting():
    # The demo's evaluations (tiny model, 30 epochs): the eval loss wobbles around 1.95 while the
    # training loss goes to ~0; the lowest evaluation is a dip, not the bottom of a U.
    evals = [1.98, 1.95, 1.99, 1.85, 2.01, 2.05, 1.97, 1.96, 1.96]
    eval_steps = [25 * (k + 1) for k in range(len(evals))]
    run = {"loss": [(s, 6.9 * math.exp(-s / 30) + 0.04) for s in range(5, 230, 5)], "eval_loss": list(zip(eval_steps, evals))}
    for k in range(3, len(evals) + 1):
        partial = dict(run, eval_loss=run["eval_loss"][:k])
        assert "overfitting" not in rules(analyse(partial, precision="fp32"), "warning"), k


def test_a_flat_eval_loss_is_not_overfitting():
    run = overfitting_run(10, best_eval=3)
    run["eval_loss"] = [(s, 1.0 + 0.001 * math.sin(s)) for s, _ in run["eval_loss"]]
    assert "overfitting" not in rules(analyse(run, precision="bf16"), "info")


# --------------------------------------------------------------------------- suspiciously low loss


def test_near_zero_loss_at_the_start_is_suspicious():
    loss = [(s, 0.004 * math.exp(-i / 10)) for i, s in enumerate(steps(10))]
    found = [f for f in analyse({"loss": loss}, precision="bf16", total_steps=1000) if f.rule == "low_loss_early"]
    assert found and found[0].severity == "warning"
    assert "leak" in found[0].advice
    zero = [(s, 0.0) for s in steps(5)]
    assert [f.severity for f in analyse({"loss": zero}, precision="bf16") if f.rule == "low_loss_early"] == ["error"]


def test_a_loss_that_reaches_zero_late_is_not_suspicious():
    loss = decay(100, seed=0, noise=0.05, start=6.9, floor=0.005, tau=10)
    assert "low_loss_early" not in rules(analyse({"loss": loss}, precision="bf16"), "info")


# --------------------------------------------------------------------------- grad norm and clipping


def test_clipping_at_every_step_by_a_large_factor_is_a_warning():
    run = healthy_run(30, seed=0, noise=0.05)
    rng = random.Random(0)
    run["grad_norm"] = [(s, 25 * math.exp(rng.gauss(0, 0.3))) for s in steps(30)]
    found = [f for f in analyse(run, precision="bf16", max_grad_norm=1.0) if f.rule == "clipping"]
    assert found and found[0].severity == "warning" and found[0].evidence["share"] == 1.0
    assert found[0].evidence["ratio"] > 10
    # Without clipping configured, there is no clipping rule.
    assert not [f for f in analyse(run, precision="bf16", max_grad_norm=0) if f.rule == "clipping"]


def test_clipping_share_counts_logged_steps_above_the_max():
    run = healthy_run(40, seed=0, noise=0.05)
    run["grad_norm"] = [(s, 2.0 if i % 4 == 0 else 0.5) for i, s in enumerate(steps(40))]
    found = [f for f in analyse(run, precision="bf16", max_grad_norm=1.0) if f.rule == "clipping"][0]
    assert found.severity == "info" and found.evidence["share"] == 0.25


def test_exploding_gradients():
    run = healthy_run(40, seed=0, noise=0.05)
    rng = random.Random(2)
    run["grad_norm"] = [(s, (0.5 if i < 25 else 0.5 * 3 ** (i - 24)) * math.exp(rng.gauss(0, 0.1)))
                        for i, s in enumerate(steps(40))]
    found = [f for f in analyse(run, precision="bf16") if f.rule == "grad_norm"]
    assert found and found[0].evidence["kind"] == "exploding" and found[0].severity == "warning"


def test_vanishing_gradients_with_a_loss_that_stays_high():
    rng = random.Random(3)
    n = 30
    run = {
        "loss": [(s, 3.0 * math.exp(rng.gauss(0, 0.02))) for s in steps(n)],
        "grad_norm": [(s, 1.0 * 10 ** (-i / 4)) for i, s in enumerate(steps(n))],
    }
    found = [f for f in analyse(run, precision="bf16") if f.rule == "grad_norm"]
    assert any(f.evidence["kind"] == "vanishing" for f in found)
    # Small gradients on a memorised (near-zero) loss are expected.
    run["loss"] = [(s, 3.0 * 10 ** (-i / 5)) for i, s in enumerate(steps(n))]
    assert not [f for f in analyse(run, precision="bf16") if f.rule == "grad_norm"]


def test_zero_gradients_mean_nothing_trains():
    run = {"loss": [(s, 2.0) for s in steps(5)], "grad_norm": [(s, 0.0) for s in steps(5)]}
    found = [f for f in analyse(run, precision="bf16") if f.rule == "grad_norm"]
    assert found and found[0].severity == "error" and found[0].evidence["kind"] == "zero"


# --------------------------------------------------------------------------- live doctor


class _Preset:
    class training:  # noqa: N801 - mimics the preset's attribute layout
        precision = "bf16"
        max_grad_norm = 1.0
        scheduler = "cosine"
        max_steps = None

    class doctor:  # noqa: N801
        stop_on_nan = True
        stop_on_divergence = True


def test_live_reports_once_and_again_only_on_material_change_or_new_figures():
    doctor = LiveDoctor(_Preset)
    loss = diverging(20, 25, seed=0, noise=0.05, growth=0.15)
    reported = []
    for index, (step, value) in enumerate(loss):
        reported += [(index, f) for f in doctor.observe(step, {"loss": value, "lr": 1e-3})]
    divergence = [(index, f) for index, f in reported if f.rule == "divergence"]
    severities = [f.severity for _, f in divergence]
    # Once, once more when it turns into an error, and its new figures now and then while it lasts.
    assert severities[0] in ("warning", "error") and severities == sorted(severities, key=["warning", "error"].index)
    assert len(divergence) <= 2 + len(loss) // UPDATE_EVERY
    for (before, first), (after, second) in zip(divergence, divergence[1:]):
        assert second.title != first.title
        if second.severity == first.severity:
            assert after - before >= UPDATE_EVERY, (before, after)
    assert all(f.stop for _, f in divergence)  # stop_on_divergence


def test_live_nan_is_reported_at_once_and_asks_to_stop():
    doctor = LiveDoctor(_Preset)
    for step, value in decay(10, seed=0, noise=0.05):
        assert above_info(doctor.observe(step, {"loss": value, "grad_norm": 0.5})) == []
    found = doctor.observe(110, {"loss": math.nan, "grad_norm": math.nan})
    assert [f.rule for f in found] == ["nan"] and found[0].stop and found[0].step_start == 110
    assert doctor.observe(120, {"loss": math.nan}) == []  # said once


def test_live_stop_flags_follow_the_preset():
    class Lenient(_Preset):
        class doctor:  # noqa: N801
            stop_on_nan = False
            stop_on_divergence = False

    doctor = LiveDoctor(Lenient)
    doctor.observe(10, {"loss": 2.0})
    found = doctor.observe(20, {"loss": math.inf})
    assert found and found[0].rule == "nan" and not found[0].stop


def test_live_ignores_reports_without_tracked_metrics():
    doctor = LiveDoctor(_Preset)
    assert doctor.observe(10, {"tokens_per_s": 1000.0, "mem_allocated": 1e9}) == []


# --------------------------------------------------------------------------- helpers and import rule


def test_rolling_median_is_trailing():
    assert rolling_median([1, 9, 2, 8, 3]) == [1, 5.0, 2, 5.0, 3]


def test_series_from_jsonl_reads_metrics_and_non_finite_values():
    lines = [
        '{"type": "run_started", "total_steps": 10}',
        '{"type": "metrics", "step": 5, "loss": 2.5, "lr": 0.001, "time": 1}',
        '{"type": "metrics", "step": 10, "loss": "nan", "grad_norm": "inf", "time": 2}',
        '{"type": "event", "level": "info", "text": "hi"}',
        '{"type": "metrics", "step": 15, "loss"',  # cut off by a crash
    ]
    series = series_from_jsonl(lines)
    assert series["loss"][0] == (5, 2.5) and math.isnan(series["loss"][1][1])
    assert series["grad_norm"] == [(10, math.inf)] and series["lr"] == [(5, 0.001)]
    assert worst_severity(analyse(series, precision="bf16")) == "error"


def test_the_rules_import_without_torch_or_numpy():
    code = (
        "import sys; import engine.doctor.rules, engine.doctor.live, engine.doctor.data_rules; "
        "heavy = [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]; print(heavy); assert not heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
