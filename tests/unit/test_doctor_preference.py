"""The doctor on preference runs (dpo, orpo, kto, simpo): each preference rule fires on its pattern
with its evidence, healthy preference curves stay quiet, and the SFT rules that misread a preference
loss are off for them. Synthetic series shaped like TRL's logs: per logged point, a batch of pairs
whose reward margins are drawn around a mean that grows as the model learns."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest

from engine.doctor.checkup import check_run
from engine.doctor.live import LiveDoctor
from engine.doctor.rules import analyse

EVERY = 10  # logging_steps of the synthetic runs


def steps(n: int) -> list[int]:
    return [(i + 1) * EVERY for i in range(n)]


def cosine_lr(n: int, peak: float = 5e-6, warmup: float = 0.1) -> list[tuple[int, float]]:
    total = n * EVERY
    warm = max(1, int(total * warmup))
    return [(s, peak * s / warm if s < warm else peak * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))))
            for s in steps(n)]


def preference_run(n: int, *, seed: int, pairs: int = 8, final_margin: float = 2.5, tau: float | None = None,
                   spread: float = 1.0, chosen_share: float = 0.15, lr=None) -> dict:
    """Each logged point averages `pairs` pairs whose margins (β·log-ratio differences) are drawn around
    `final_margin`·(1 - e^(-t/tau)): the DPO loss, reward accuracy, margins, rewards and log-probs;
    the chosen reward falls by `chosen_share` of the margin (the rejected one by the rest)."""
    rng = random.Random(seed)
    tau = tau or n / 3
    run: dict[str, list] = {name: [] for name in (
        "loss", "grad_norm", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
        "logps/chosen", "logps/rejected")}
    for i, s in enumerate(steps(n)):
        mean = final_margin * (1 - math.exp(-(i + 1) / tau))
        margins = [rng.gauss(mean, 0.05 + spread * abs(mean)) for _ in range(pairs)]
        margin = sum(margins) / pairs
        chosen = -chosen_share * mean + rng.gauss(0, 0.05 + 0.1 * abs(mean))
        rejected = chosen - margin
        run["loss"].append((s, sum(math.log1p(math.exp(-m)) for m in margins) / pairs))
        run["grad_norm"].append((s, (1.2 * math.exp(-i / 40) + 0.3) * math.exp(rng.gauss(0, 0.25))))
        run["rewards/margins"].append((s, margin))
        run["rewards/accuracies"].append((s, sum(m > 0 for m in margins) / pairs))
        run["rewards/chosen"].append((s, chosen))
        run["rewards/rejected"].append((s, rejected))
        run["logps/chosen"].append((s, -120 + 10 * chosen))
        run["logps/rejected"].append((s, -130 + 10 * rejected))
    run["lr"] = cosine_lr(n) if lr is None else lr
    return run


def constant_lr(n: int, lr: float = 5e-6) -> list[tuple[int, float]]:
    return [(s, lr) for s in steps(n)]


def above_info(findings):
    return [f for f in findings if f.severity != "info"]


def only(findings, rule):
    found = [f for f in findings if f.rule == rule]
    assert len(found) == 1, [(f.rule, f.title) for f in findings]
    return found[0]


def doctor(run, stage="dpo", **kw):
    kw.setdefault("total_steps", len(run["loss"]) * EVERY)
    return analyse(run, precision="bf16", max_grad_norm=1.0, stage=stage, preset_lr=5e-6, **kw)


# --------------------------------------------------------------------------- healthy curves


@pytest.mark.parametrize("pairs", [2, 8, 64])
@pytest.mark.parametrize("stage", ["dpo", "simpo", "orpo"])
def test_healthy_preference_curves_produce_nothing_above_info(pairs, stage):
    for seed in range(8):
        for n in (10, 30, 120):
            for final_margin in (1.0, 2.5, 6.0):
                findings = doctor(preference_run(n, seed=seed, pairs=pairs, final_margin=final_margin), stage)
                assert above_info(findings) == [], (seed, n, final_margin, [f.title for f in above_info(findings)])


def test_sft_rules_misfire_on_dpo_curves_and_are_off_for_preference_runs():
    # The same healthy DPO curves read as SFT: a batch's hardest pair makes the loss jump (oscillation,
    # spikes) and a loss creeping down from ln 2 looks stuck (plateau). Read as DPO: quiet.
    misread = set()
    for pairs in (2, 4, 8):
        for seed in range(6):
            run = preference_run(120, seed=seed, pairs=pairs)
            misread |= {f.rule for f in above_info(doctor(run, "sft"))}
            assert above_info(doctor(run, "dpo")) == []
    assert misread & {"oscillation", "plateau", "spikes", "divergence"}, misread


def test_a_slow_dpo_start_is_not_a_plateau():
    # Full fine-tuning DPO at lr 5e-7: the loss creeps 0.693 → 0.68 while the accuracy climbs.
    run = preference_run(60, seed=3, pairs=64, final_margin=0.04, tau=60, spread=0.2, lr=constant_lr(60, 5e-7))
    assert "plateau" in {f.rule for f in above_info(doctor(run, "sft"))}
    assert above_info(doctor(run, "dpo")) == []


def test_healthy_dpo_stays_quiet_at_every_point_of_a_live_run():
    for seed in range(4):
        run = preference_run(60, seed=seed, pairs=4)
        live = LiveDoctor(SimpleNamespace(stage="dpo", training=None, doctor=None), precision="bf16")
        live.max_grad_norm = 1.0
        for i, step in enumerate(steps(60)):
            reported = live.observe(step, {name: run[name][i][1] for name in run})
            assert above_info(reported) == [], (seed, step, [f.title for f in reported])


def test_the_metrics_tell_a_preference_run_when_the_stage_is_unknown():
    run = preference_run(60, seed=1, final_margin=0.0)
    assert "pref_accuracy" in {f.rule for f in analyse(run)}  # stage=None: the rewards say it
    sft_only = {name: run[name] for name in ("loss", "grad_norm", "lr")}
    assert not any(f.rule.startswith("pref_") for f in analyse(sft_only))


# --------------------------------------------------------------------------- reward accuracy


def test_accuracy_stuck_near_chance():
    finding = only(doctor(preference_run(60, seed=1, final_margin=0.0)), "pref_accuracy")
    assert finding.severity == "warning" and finding.evidence["kind"] == "stuck"
    assert abs(finding.evidence["accuracy"] - 0.5) < 0.1 and finding.evidence["points"] == 60
    assert "training.lr: 5e-06 → 1.5e-05" in finding.advice and "preference.beta" in finding.advice
    assert finding.change == {"training.lr": 1.5e-05}  # what the fix key applies
    assert "data.max_length" in finding.advice


def test_accuracy_below_chance_with_negative_margins_says_the_pairs_are_swapped():
    finding = only(doctor(preference_run(60, seed=1, final_margin=-2.0)), "pref_accuracy")
    assert finding.evidence["kind"] == "inverted" and finding.evidence["accuracy"] < 0.3
    assert finding.evidence["margin"] < 0
    assert "swapped" in finding.advice and "data.columns" in finding.advice


def test_ties_count_as_wrong_in_trl_but_are_no_swap():
    # Rewards exactly equal (nothing learnt, e.g. a zero update in bf16): TRL logs accuracy 0.
    run = preference_run(40, seed=0)
    run["rewards/accuracies"] = [(s, 0.0) for s, _ in run["loss"]]
    run["rewards/margins"] = [(s, 0.0) for s, _ in run["loss"]]
    assert only(doctor(run), "pref_accuracy").evidence["kind"] == "stuck"


def test_a_rising_accuracy_is_not_stuck():
    # Still under 60 %, but climbing steadily from chance: early in a run at a small learning rate.
    run = preference_run(60, seed=0, pairs=64, final_margin=0.05, tau=60, spread=2.0)
    rng = random.Random(0)
    run["rewards/accuracies"] = [(s, 0.5 + 0.1 * i / 60 + rng.gauss(0, 0.03)) for i, s in enumerate(steps(60))]
    accuracy = [v for _, v in run["rewards/accuracies"]]
    assert sum(accuracy[:20]) / 20 < 0.55 and sum(accuracy[-20:]) / 20 < 0.6
    assert "pref_accuracy" not in {f.rule for f in doctor(run)}


# --------------------------------------------------------------------------- margins


def test_margins_that_shrink_after_their_best():
    run = preference_run(60, seed=1, final_margin=3.0, tau=5)
    run["rewards/margins"] = [(s, v if i < 30 else v * max(0.1, 1 - (i - 30) / 20))
                              for i, (s, v) in enumerate(run["rewards/margins"])]
    finding = only(doctor(run), "pref_margins")
    assert finding.severity == "warning" and finding.evidence["kind"] == "shrinking"
    assert finding.evidence["best_margin"] > 2.5 and finding.evidence["margin_now"] < 1.0
    assert finding.step_start == finding.evidence["best_step"] <= 310
    assert "training.lr: 5e-06 → 1.7e-06" in finding.advice and finding.change == {"training.lr": 1.7e-06}


def test_shrinking_margins_stop_the_run_under_stop_on_divergence():
    run = preference_run(60, seed=1, final_margin=3.0, tau=5)
    run["rewards/margins"] = [(s, v if i < 30 else v * max(0.1, 1 - (i - 30) / 20))
                              for i, (s, v) in enumerate(run["rewards/margins"])]
    for stop in (True, False):
        live = LiveDoctor(SimpleNamespace(stage="dpo", training=None, doctor=SimpleNamespace(stop_on_nan=True, stop_on_divergence=stop)),
                          precision="bf16")
        reported = [f for i, s in enumerate(steps(60)) for f in live.observe(s, {n: run[n][i][1] for n in run})]
        shrinking = [f for f in reported if f.rule == "pref_margins" and f.evidence["kind"] == "shrinking"]
        assert shrinking and all(f.stop == stop for f in shrinking)


def test_margins_that_stop_growing_while_the_lr_is_high():
    # Margins flat at 0.5 with three pairs in ten still wrong, the learning rate at its peak.
    run = preference_run(60, seed=1, pairs=64, final_margin=0.5, spread=2.5, tau=5, lr=constant_lr(60))
    finding = only(doctor(run), "pref_margins")
    assert finding.severity == "warning" and finding.evidence["kind"] == "stalled"
    assert 0.55 < finding.evidence["accuracy_now"] < 0.7
    assert abs(finding.evidence["window_growth"]) < 0.1 and "preference.beta" in finding.advice
    # The same margins at the end of a decayed schedule are the schedule ending: nothing to say.
    run["lr"] = cosine_lr(60)
    assert "pref_margins" not in {f.rule for f in doctor(run)}


# --------------------------------------------------------------------------- chosen reward


def test_the_chosen_reward_falling_with_the_rejected_one():
    finding = only(doctor(preference_run(60, seed=1, final_margin=3.0, chosen_share=0.8)), "pref_chosen")
    assert finding.severity == "warning" and finding.evidence["kind"] == "falling"
    evidence = finding.evidence
    assert evidence["chosen_now"] < evidence["chosen_early"] - 1.5
    assert evidence["rejected_now"] < evidence["chosen_now"]
    assert evidence["share_of_rejected_fall"] >= 0.5
    assert evidence["logps_chosen_now"] < evidence["logps_chosen_early"]  # the preferred answers' likelihood
    assert "preference.beta" in finding.advice and "model.start_from" in finding.advice


def test_a_chosen_reward_that_only_drifts_is_info():
    finding = only(doctor(preference_run(60, seed=1, final_margin=3.0, chosen_share=0.3)), "pref_chosen")
    assert finding.severity == "info" and finding.evidence["kind"] == "drifting"


# --------------------------------------------------------------------------- too easy


def test_a_loss_near_zero_within_the_first_steps_says_the_pairs_are_too_easy():
    run = preference_run(60, seed=1, final_margin=10.0, tau=3, spread=0.1)
    finding = only(doctor(run), "pref_easy")
    assert finding.severity == "warning"
    assert finding.evidence["loss"] < 0.05 and finding.evidence["step"] <= 60
    assert finding.evidence["first_loss"] > 0.05 and finding.evidence["accuracy"] == 1.0
    assert "data.max_length" in finding.advice
    # The SFT reading of the same curve (labels leaking) is not given for a preference run.
    assert "low_loss_early" not in {f.rule for f in doctor(run)}


def test_a_loss_reaching_zero_late_is_not_too_easy():
    run = preference_run(60, seed=1, final_margin=10.0, tau=20, spread=0.1)
    assert "pref_easy" not in {f.rule for f in doctor(run)}


# --------------------------------------------------------------------------- NaN


def test_nan_log_probs_are_an_error_with_preference_advice_and_stop_the_run():
    run = preference_run(60, seed=1)
    for name in ("logps/chosen", "rewards/chosen"):
        run[name][40] = (run[name][40][0], math.nan)
    finding = only(doctor(run), "nan")
    assert finding.severity == "error" and finding.step_start == 410
    assert finding.evidence["nonfinite_logps/chosen"] == 1 and "logps/chosen" in finding.title
    assert "data.max_length" in finding.advice
    live = LiveDoctor(SimpleNamespace(stage="dpo", training=None, doctor=None), precision="bf16")
    reported = [f for i, s in enumerate(steps(60)) for f in live.observe(s, {n: run[n][i][1] for n in run})]
    assert any(f.rule == "nan" and f.stop for f in reported)


def test_nan_in_reward_metrics_of_an_sft_run_is_not_read():
    run = preference_run(30, seed=1)
    sft = {name: run[name] for name in ("loss", "grad_norm", "lr")}
    sft["kl"] = [(10, math.nan)]  # a stray metric an SFT run would never log
    assert "nan" not in {f.rule for f in analyse(sft, stage="sft")}


# --------------------------------------------------------------------------- after the fact


def test_check_run_reads_the_stage_from_the_frozen_preset():
    run = preference_run(60, seed=1, final_margin=0.0)
    rows = [(s, name, v) for name, points in run.items() for s, v in points]
    preset = "name: t\nstage: dpo\nmodel: {path: /models/base}\ndata: {train_files: [/data/t.json]}\ntraining: {lr: 5.0e-6}\n"
    findings = check_run(rows, preset).findings
    assert only(findings, "pref_accuracy").evidence["kind"] == "stuck"
    assert "training.lr: 5e-06" in only(findings, "pref_accuracy").advice


# --------------------------------------------------------------------------- from TRL's logs to the sink


class _Sink:
    def __init__(self):
        self.sent: list[tuple[int, dict]] = []
        self.findings: list[dict] = []

    def metrics(self, step, values):
        self.sent.append((step, values))

    def finding(self, finding):
        self.findings.append(finding)

    def event(self, *args):
        pass

    def run_started(self, info):
        pass


def test_the_callback_hands_trl_preference_metrics_to_the_sink_and_the_doctor(tmp_path):
    import torch

    from engine.callback import EngineCallback
    from presets import load_preset_text

    preset = load_preset_text("name: t\nstage: dpo\nmodel: {path: /models/base}\ndata: {train_files: [/data/t.json]}\n", "t.yaml")
    sink = _Sink()
    callback = EngineCallback(preset, tmp_path, sink, device=torch.device("cpu"), run_info={"precision": "fp32"})
    args = SimpleNamespace(world_size=1)
    state = SimpleNamespace(global_step=10, num_input_tokens_seen=0, log_history=[], max_steps=100,
                            is_world_process_zero=True, epoch=0.1)
    callback.on_train_begin(args, state, SimpleNamespace(), model=None)
    # What TRL's DPOTrainer.log adds to a training log, and (eval_-prefixed) to the evaluation's metrics.
    trl = {"rewards/chosen": -0.1, "rewards/rejected": -0.6, "rewards/margins": 0.5, "rewards/accuracies": 0.75,
           "logps/chosen": -120.5, "logps/rejected": -131.0, "logits/chosen": -1.5, "entropy": 2.0}
    callback.on_log(args, state, SimpleNamespace(), logs={"loss": 0.55, "learning_rate": 5e-6, "grad_norm": 1.0, **trl})
    step, values = sink.sent[-1]
    assert step == 10
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                 "logps/rejected"):
        assert values[name] == trl[name]
    assert "logits/chosen" not in values  # only the metrics the dashboard and the doctor read
    assert callback.doctor.series["rewards/accuracies"] == [(10, 0.75)]
    state.global_step = 20
    callback.on_evaluate(args, state, SimpleNamespace(), metrics={"eval_loss": 0.6, "eval_rewards/accuracies": 0.7,
                                                                  "eval_rewards/margins": 0.4, "eval_kl": 0.02})
    step, values = sink.sent[-1]
    assert (step, values["eval_rewards/accuracies"], values["eval_rewards/margins"], values["eval_kl"]) == (20, 0.7, 0.4, 0.02)


def test_the_run_log_shows_the_reward_accuracy_and_margin():
    # run.log is what `tunebench logs -f` and the dashboard's log pane read.
    import io

    from engine.sink import TextLogSink

    out = io.StringIO()
    log = TextLogSink(out)
    log.run_started({"total_steps": 2})
    log.metrics(1, {"loss": 0.69, "lr": 5e-6, "rewards/accuracies": 0.5, "rewards/margins": 0.01})
    log.metrics(2, {"eval_loss": 0.6, "eval_ppl": 1.8, "eval_rewards/accuracies": 0.75})
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines[1:] == ["step 1/2: loss 0.69, lr 5e-06, reward accuracy 0.5, reward margin 0.01",
                         "step 2/2: eval loss 0.6, perplexity 1.8, reward accuracy 0.75"]


def test_an_accuracy_climbing_from_under_chance_is_learning_not_swapped():
    # Without a reference (simpo, orpo) the first accuracies are the base model's own preference.
    run = preference_run(60, seed=1, final_margin=-2.0)
    rng = random.Random(1)
    run["rewards/accuracies"] = [(s, 0.1 + 0.25 * i / 60 + rng.gauss(0, 0.03)) for i, s in enumerate(steps(60))]
    assert "pref_accuracy" not in {f.rule for f in doctor(run, "simpo")}
