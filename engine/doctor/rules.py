"""Rules on the metric stream: why a loss does not converge, with the numbers and the next step.

Pure Python (no torch, no numpy) so the TUI and the CLI can run it on stored metrics.

Every rule reads a whole series, smoothed with trailing rolling medians, and compares levels with
thresholds that are relative to the loss itself and to its own measured noise — never one point
against a constant. A healthy run (a noisy, decaying loss) yields nothing above "info".
Loss values are cross-entropies in nats, so the few absolute floors below (e.g. 0.05 nats) are
meaningful units, used only so that wiggles of an almost-zero loss are not read as trouble.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Iterable, Sequence

from engine.doctor import Finding
from presets.stages import PREFERENCE_METRICS, STAGES

Point = tuple[int, float]
Series = dict[str, Sequence[Point]]

SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}

SMOOTH = 5  # trailing rolling-median window (logged points): a lone point never moves it
BEST_WINDOW = 10  # rolling-median window for "the best level so far"
MIN_POINTS = 6  # fewer logged points say nothing about a trend
ZERO = 1e-12

# Thresholds, relative unless the name says nats.
DIVERGE_REL_BEST = 0.1  # smoothed loss 10 % above its best …
DIVERGE_SHARE_OF_DESCENT = 0.25  # … and a quarter of the way back to where it started …
DIVERGE_NOISE = 3.0  # … and well outside the measured noise
DIVERGE_FLOOR_NATS = 0.05
TREND_MIN_RISE = 0.1  # a steady climb of 10 % over the recent window
TREND_MIN_TAU = 0.5  # Kendall's tau of that climb
TREND_MIN_POINTS = 12
SPIKE_REL = 0.5  # a point 50 % above the median of the points before it …
SPIKE_NOISE = 5.0  # … and 5 noise widths above it
SPIKE_WARN_RATIO = 3.0  # one spike is worth a warning when it triples the loss
SPIKE_FLOOR_OF_EARLY = 0.1  # … and 10 % of the early loss level above it
PLATEAU_MIN_POINTS = 20
PLATEAU_STUCK_REL = 0.03  # under 3 % better than at the start: it never learnt
PLATEAU_MAX_TAU = -0.15  # and no consistent downward ordering either
PLATEAU_NOISE = 1.5  # the best of a flat noisy series sits about a noise width below its start
PLATEAU_STALL_REL = 0.02  # under 2 % better over the recent window …
PLATEAU_STALL_POINTS = 10  # … of at least this many reports
OSCILLATION_SWING = 0.4  # median move of 40 % from one logged point to the next
OSCILLATION_FLOOR_NATS = 0.05
OSCILLATION_MIN_POINTS = 16
OVERFIT_RISE = 0.05  # eval loss 5 % above its best, still climbing …
OVERFIT_SHARP_RISE = 0.15  # … or 15 % at two evaluations in a row
OVERFIT_NOISE = 2.0  # … and twice the evaluations' own noise
OVERFIT_WOBBLE = 0.005  # "no lower than the one before", within 0.5 %
OVERFIT_FLOOR_NATS = 0.02
LOW_LOSS_NATS = 0.05  # the first losses of a real fine-tune are far above this
GRAD_EXPLODE = 10.0  # smoothed grad_norm 10x above its lowest and …
GRAD_EXPLODE_OF_EARLY = 5.0  # … 5x above its early level
GRAD_VANISH = 1e-3  # smoothed grad_norm a thousandth of its early level
CLIP_INFO_SHARE = 0.2
CLIP_WARN_SHARE = 0.9
CLIP_WARN_RATIO = 10.0  # median grad_norm / max_grad_norm when every update is cut that much
FP16_SKIP_SHARE = 0.2  # fp16 loss scaling skips a few steps with inf gradients: that is normal
# Preference stages (presets/stages.py). Rewards and margins are in β·nats, accuracies are shares of
# pairs: these thresholds are absolute where the quantity has a fixed scale (chance is 0.5).
PREF_MIN_POINTS = 20  # logged points before the accuracy and margin trends say anything
PREF_CHANCE = 0.5
PREF_ACC_BAND = 0.1  # a recent accuracy within 0.1 of chance …
PREF_ACC_MIN_GAIN = 0.05  # … that gained less than this since the start, is stuck
PREF_ACC_RISING_TAU = 0.25  # … or a consistent climb (about 3 standard errors of Kendall's tau at 60 points)
PREF_ACC_NOISE = 2.0  # standard errors of the recent mean that must separate it from chance
PREF_MARGIN_FALL = 0.3  # margins 30 % below their best …
PREF_MARGIN_NOISE = 3.0  # … and 3 point-noise widths below it: they shrink
PREF_MARGIN_STALL = 0.05  # margins that grew under 5 % over the recent window have stopped growing
PREF_MARGIN_STALL_ACC = 0.7  # stopped below this accuracy: worth a warning (above it: info)
PREF_CHOSEN_MIN_POINTS = 12
PREF_CHOSEN_TAU = -0.3  # the chosen reward goes down consistently …
PREF_CHOSEN_NOISE = 2.0  # … by more than 2 point-noise widths …
PREF_CHOSEN_SHARE = 0.5  # … and at least half as fast as the rejected one: a warning
PREF_EASY_LOSS_NATS = 0.05  # a DPO loss starts at ln 2 = 0.693; this low within the first steps is too easy


# --------------------------------------------------------------------------- small statistics


def _clean(points: Iterable[Point] | None) -> list[tuple[int, float]]:
    """Sorted by step, one value per step (the last one logged), values as floats."""
    by_step: dict[int, float] = {}
    for step, value in points or ():
        try:
            by_step[int(step)] = float(value)
        except (TypeError, ValueError):
            by_step[int(step)] = math.nan
    return sorted(by_step.items())


def _finite(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return [(s, v) for s, v in points if math.isfinite(v)]


def rolling_median(values: Sequence[float], window: int = SMOOTH) -> list[float]:
    """Trailing rolling median; the first points use the shorter windows they have."""
    return [median(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def relative_noise(values: Sequence[float]) -> float:
    """Robust relative noise of one logged point (σ of log x), immune to trends and spikes.

    Second differences of logs cancel any exponential trend (decay or blow-up) exactly, so a
    steep curve does not pass for a noisy one; for iid noise they have σ·√6, whose median
    absolute value is 1.65σ. Logs make it scale-free; the median ignores spikes.
    """
    logs = [math.log(max(v, 1e-8)) for v in values]
    second = [abs(a - 2 * b + c) for a, b, c in zip(logs, logs[1:], logs[2:])]
    if not second:
        diffs = [abs(b - a) for a, b in zip(logs, logs[1:])]
        return median(diffs) / 0.954 if diffs else 0.0
    return median(second) / 1.65


def _above(level: float, rel: float, log_noise: float) -> float:
    """How far above `level` a value must be: `rel` of it, and `log_noise` noise widths (noise is
    multiplicative, so the margin is exp(k·σ) - 1 of the level, not k·σ)."""
    return level * max(rel, math.expm1(min(log_noise, 50.0)))


def kendall_tau(values: Sequence[float], max_points: int = 200) -> float:
    """Rank correlation of the values with time: +1 steadily up, -1 steadily down.

    O(n²): a long series is first reduced to `max_points` bucket medians, which keeps its ordering.
    """
    if len(values) > max_points:
        size = len(values) / max_points
        values = [median(values[int(k * size) : max(int(k * size) + 1, int((k + 1) * size))]) for k in range(max_points)]
    n = len(values)
    if n < 3:
        return 0.0
    concordant = discordant = 0
    for i in range(n):
        for j in range(i + 1, n):
            if values[j] > values[i]:
                concordant += 1
            elif values[j] < values[i]:
                discordant += 1
    pairs = n * (n - 1) / 2
    return (concordant - discordant) / pairs


def _round(value: float, digits: int = 4) -> float | str:
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return 0.0
    return float(f"{value:.{digits}g}")


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3g}" if abs(value) >= 1e-3 else f"{value:.2e}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _positive(value: float | None) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class _Context:
    """What several rules share: the learning rate and the precision, for advice."""

    def __init__(self, series: Series, precision: str | None, lr_schedule: str | None,
                 max_grad_norm: float | None, total_steps: int | None, preset_lr: float | None = None):
        self.precision = (precision or "auto").lower()
        self.lr_schedule = lr_schedule
        self.max_grad_norm = max_grad_norm
        self.total_steps = total_steps
        self.lr = _finite(_clean(series.get("lr")))
        self.lr_max = max((v for _, v in self.lr), default=None)
        # The value the user can edit: during warmup the logged rates are only a fraction of it.
        self.preset_lr = _positive(preset_lr)
        self.preference = False  # a preference stage's run (analyse sets it): its rules replace some of SFT's

    def lr_at(self, step: int) -> float | None:
        before = [v for s, v in self.lr if s <= step]
        return before[-1] if before else (self.lr[0][1] if self.lr else None)

    def has_warmup(self) -> bool | None:
        if len(self.lr) < 2 or not self.lr_max:
            return None
        return self.lr[0][1] < 0.5 * self.lr_max

    def lower_lr_change(self, factor: int = 5) -> dict:
        """The preset change behind lower_lr_advice (the same rounded value), when the preset's rate is known."""
        return {"training.lr": float(f"{self.preset_lr / factor:.2g}")} if self.preset_lr else {}

    def warmup_change(self) -> dict:
        """Warmup added (none now) or doubled (the logged rates say where it ends), as a preset change."""
        warmup = self.has_warmup()
        if warmup is False:
            return {"training.warmup_ratio": 0.05}
        if warmup and self.total_steps and self.lr_max:
            end = next((s for s, v in self.lr if v >= 0.99 * self.lr_max), None)
            if end:
                # warmup_steps wins over warmup_ratio when set: the ratio takes over.
                return {"training.warmup_ratio": round(min(0.3, max(0.02, 2 * end / self.total_steps)), 3),
                        "training.warmup_steps": 0}
        return {}

    def lower_lr_advice(self, factor: int = 5) -> str:
        if self.preset_lr:
            return f"lower the learning rate ÷{factor} (training.lr: {self.preset_lr:.3g} → {self.preset_lr / factor:.2g})"
        if self.lr_max:
            return (f"lower the learning rate ÷{factor} (the highest logged rate was {self.lr_max:.3g}: "
                    f"training.lr about {self.lr_max / factor:.2g})")
        return f"lower the learning rate ÷{factor} (training.lr)"

    def raise_lr_advice(self, factor: int = 3) -> str:
        if self.preset_lr:
            return f"raise the learning rate ×{factor} (training.lr: {self.preset_lr:.3g} → {self.preset_lr * factor:.2g})"
        if self.lr_max:
            return (f"raise the learning rate ×{factor} (the highest logged rate was {self.lr_max:.3g}: "
                    f"training.lr about {self.lr_max * factor:.2g})")
        return f"raise the learning rate ×{factor} (training.lr)"

    def raise_lr_change(self, factor: int = 3) -> dict:
        """The preset change behind raise_lr_advice, when the preset's rate is known."""
        return {"training.lr": float(f"{self.preset_lr * factor:.2g}")} if self.preset_lr else {}


# --------------------------------------------------------------------------- rules


def _nan_rule(series: Series, ctx: _Context) -> list[Finding]:
    findings = []
    bad: dict[str, list[tuple[int, float]]] = {}
    total: dict[str, int] = {}
    # A preference run's log-probs and rewards turn NaN on their own (an answer cut to no tokens).
    for name in ("loss", "eval_loss", "grad_norm", *(PREFERENCE_METRICS if ctx.preference else ())):
        points = _clean(series.get(name))
        total[name] = len(points)
        nonfinite = [(s, v) for s, v in points if not math.isfinite(v)]
        if nonfinite:
            bad[name] = nonfinite
    if not bad:
        return findings

    loss_points = _clean(series.get("loss"))
    grad_only = set(bad) == {"grad_norm"}
    if grad_only and ctx.precision == "fp16":
        # The fp16 loss scaler skips a step whenever the scaled gradients overflow, and lowers the
        # scale: a few inf grad norms early on are its normal search, not a broken run.
        grads = _clean(series.get("grad_norm"))
        share = len(bad["grad_norm"]) / max(1, len(grads))
        tail_bad = all(not math.isfinite(v) for _, v in grads[-3:]) and len(grads) >= 3
        if share < FP16_SKIP_SHARE and not tail_bad:
            steps = [s for s, _ in bad["grad_norm"]]
            return [Finding(
                rule="nan", severity="info",
                title=f"fp16 loss scaling skipped {len(steps)} step(s) with inf gradients",
                advice="Normal while the loss scaler finds its scale; if it keeps happening, use bf16 (training.precision: bf16).",
                step_start=steps[0], step_end=steps[-1],
                evidence={"kind": "fp16_skip", "nonfinite_grad_norm_steps": steps[:20], "share": _round(share)},
            )]

    first_step = min(points[0][0] for points in bad.values())
    last_step = max(points[-1][0] for points in bad.values())
    evidence: dict = {"first_step": first_step}
    for name, points in bad.items():
        evidence[f"nonfinite_{name}"] = len(points)
        evidence[f"{name}_value"] = str(points[0][1])
    finite_before = [v for s, v in _finite(loss_points) if s < first_step]
    if finite_before:
        evidence["last_finite_loss"] = _round(finite_before[-1])
    grads_before = [v for s, v in _finite(_clean(series.get("grad_norm"))) if s < first_step]
    if len(grads_before) >= 3:
        evidence["grad_norm_before"] = _round(grads_before[-1])
        evidence["grad_norm_median"] = _round(median(grads_before))
    lr = ctx.lr_at(first_step)
    if lr is not None:
        evidence["lr"] = _round(lr)

    names = " and ".join(list(bad)[:3]) + (" …" if len(bad) > 3 else "")
    first_value = next(points[0][1] for points in bad.values() if points[0][0] == first_step)
    if ctx.precision == "fp16":
        advice = (
            "fp16 overflowed: train in bf16 (training.precision: bf16) on a GPU that has it (Ampere or newer); "
            f"on an older GPU keep fp16 loss scaling on, {ctx.lower_lr_advice()} and keep clipping (training.max_grad_norm: 1.0)."
        )
    else:
        maybe_fp16 = " If the run used fp16, switch to bf16 (training.precision: bf16)." if ctx.precision == "auto" else ""
        advice = (
            f"{_capital(ctx.lower_lr_advice())}, keep clipping on (training.max_grad_norm: 1.0) "
            f"and add warmup; check the data around step {first_step} for empty or extreme samples "
            f"(tunebench doctor PRESET).{maybe_fp16}"
        )
    if ctx.preference:
        advice += (" In a preference run, NaN log-probs also come from a chosen or rejected answer with no tokens left: "
                   "empty answers, or prompts that data.max_length cuts the answers off (raise it or drop such pairs).")
    change = {"training.precision": "bf16"} if ctx.precision == "fp16" else ctx.lower_lr_change()
    findings.append(Finding(
        rule="nan", severity="error",
        title=f"{names} became {first_value} at step {first_step}",
        advice=advice, step_start=first_step, step_end=last_step, evidence=evidence, change=change,
    ))
    return findings


# A steady trend that grows into a jump is one climbing loss: one finding that updates, not two.
CLIMB_KEY = "climb"


def _divergence_rule(loss: list[tuple[int, float]], ctx: _Context) -> list[Finding]:
    if len(loss) < MIN_POINTS:
        return []
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    smooth = rolling_median(values)
    start = min(SMOOTH - 1, len(values) - 1)
    early = median(values[: min(SMOOTH, len(values))])
    # The best level uses a wider window than the current one: the lowest of many short medians is
    # biased low by the noise, and would make an ordinary wiggle look like a climb.
    wide = rolling_median(values, BEST_WINDOW) if len(values) >= 3 * BEST_WINDOW // 2 else smooth
    best_index = min(range(start, len(wide)), key=lambda i: wide[i])
    best = wide[best_index]
    current = smooth[-1]
    noise = relative_noise(values)
    threshold = max(
        _above(best, DIVERGE_REL_BEST, DIVERGE_NOISE * noise),
        DIVERGE_SHARE_OF_DESCENT * max(0.0, early - best),
        DIVERGE_FLOOR_NATS,
    )
    rise = current - best
    # The turn: the lowest point inside the best smoothing window.
    window = SMOOTH if wide is smooth else BEST_WINDOW
    turn_index = min(range(max(0, best_index - window + 1), best_index + 1), key=lambda i: values[i])
    turn_step = steps[turn_index]
    evidence = {
        "best_loss": _round(best), "best_step": turn_step, "current_loss": _round(current),
        "last_loss": _round(values[-1]), "early_loss": _round(early), "ratio_to_best": _round(current / best if best > ZERO else math.inf),
        "threshold": _round(threshold), "noise_rel": _round(noise),
    }
    warmup = ctx.has_warmup()
    warmup_advice = " and add warmup (training.warmup_ratio: 0.05)" if warmup is False else (
        " and lengthen the warmup" if warmup else " and check the warmup (training.warmup_ratio)"
    )
    advice = (
        f"{_capital(ctx.lower_lr_advice())}{warmup_advice}; "
        "keep gradient clipping on (training.max_grad_norm: 1.0)."
    )
    if rise > threshold and values[-1] > best + threshold / 2:
        lost_all = current >= early
        return [Finding(
            rule="divergence", severity="error" if lost_all else "warning",
            title=(
                f"the loss diverges: {_fmt(current)} now against its best {_fmt(best)} around step {turn_step}"
                + (" — above where it started" if lost_all else "")
            ),
            advice=advice, step_start=turn_step, step_end=steps[-1], evidence={"kind": "rise", **evidence},
            key=CLIMB_KEY, change={**ctx.lower_lr_change(), **ctx.warmup_change()},
        )]

    # A steady climb over the recent window, smaller than the jump above but consistent.
    window = max(TREND_MIN_POINTS, len(values) // 4)
    if len(values) >= window + SMOOTH:
        recent = values[-window:]
        tau = kendall_tau(recent)
        level_start = median(recent[: window // 3])
        level_end = median(recent[-(window // 3):])
        climb = level_end - level_start
        floor = max(_above(level_start, TREND_MIN_RISE, DIVERGE_NOISE * noise), DIVERGE_FLOOR_NATS,
                    DIVERGE_SHARE_OF_DESCENT * max(0.0, early - best))
        if tau >= TREND_MIN_TAU and climb > floor:
            start_step = steps[-window]
            return [Finding(
                rule="divergence", severity="warning",
                title=f"the loss trends up: {_fmt(level_start)} → {_fmt(level_end)} since step {start_step}",
                advice=advice, step_start=start_step, step_end=steps[-1],
                evidence={"kind": "trend", **evidence, "trend_tau": _round(tau), "window_start_loss": _round(level_start),
                          "window_end_loss": _round(level_end)},
                key=CLIMB_KEY, change={**ctx.lower_lr_change(), **ctx.warmup_change()},
            )]
    return []


def _excursions(values: Sequence[float], early: float, noise: float) -> list[dict]:
    """Short excursions far above the median of the points before them that came back down."""
    spikes: list[dict] = []
    i = SMOOTH
    while i < len(values):
        ref = median(values[i - SMOOTH : i])
        threshold = max(_above(ref, SPIKE_REL, SPIKE_NOISE * noise), SPIKE_FLOOR_OF_EARLY * early, DIVERGE_FLOOR_NATS)
        if values[i] - ref <= threshold:
            i += 1
            continue
        end = i
        while end + 1 < len(values) and values[end + 1] - ref > threshold / 2 and end - i < 3:
            end += 1
        came_back = end + 1 < len(values) and values[end + 1] - ref <= threshold / 2
        if came_back and end - i < 2:
            peak = max(range(i, end + 1), key=lambda k: values[k])
            spikes.append({"index": peak, "value": values[peak], "median_before": ref})
        i = end + 1
    return spikes


def _spike_rule(loss: list[tuple[int, float]], ctx: _Context, metric: str = "loss") -> list[Finding]:
    if len(loss) < SMOOTH + 2:
        return []
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    early = median(values[:SMOOTH])
    spikes = _excursions(values, early, relative_noise(values))
    if not spikes:
        return []
    ratios = [s["value"] / max(s["median_before"], ZERO) for s in spikes]
    worst = max(range(len(spikes)), key=lambda k: ratios[k])
    spike_steps = [steps[s["index"]] for s in spikes]
    severity = "warning" if len(spikes) >= 2 or ratios[worst] >= SPIKE_WARN_RATIO else "info"
    clip = ctx.max_grad_norm
    clip_advice = (
        "turn gradient clipping on (training.max_grad_norm: 1.0)" if not clip
        else f"clip harder (training.max_grad_norm: {clip:g} → {clip / 2:g})"
    )
    return [Finding(
        rule="spikes", severity=severity,
        title=(
            f"{len(spikes)} {metric} spike(s), the largest {_fmt(spikes[worst]['value'])} at step {spike_steps[worst]} "
            f"({ratios[worst]:.1f}x the median before it)"
        ),
        advice=(
            f"{_capital(clip_advice)}; {ctx.lower_lr_advice(2)}; look at the batches at those steps "
            "(very long, empty or mislabelled samples)."
        ),
        step_start=spike_steps[0], step_end=spike_steps[-1],
        evidence={"count": len(spikes), "steps": spike_steps[:20], "largest": _round(spikes[worst]["value"]),
                  "median_before": _round(spikes[worst]["median_before"]), "ratio": _round(ratios[worst])},
        change={"training.max_grad_norm": clip / 2 if clip else 1.0, **ctx.lower_lr_change(2)},
    )]


def _plateau_rule(loss: list[tuple[int, float]], ctx: _Context) -> list[Finding]:
    findings: list[Finding] = []
    lr_values = [v for _, v in ctx.lr]
    if len(lr_values) >= 3 and max(lr_values) <= ZERO:
        # Nothing can learn: say it whatever the loss does.
        steps = [s for s, _ in ctx.lr]
        evidence = {"kind": "zero_lr", "lr_max": _round(max(lr_values)), "lr_points": len(lr_values)}
        if loss:
            evidence.update(first_loss=_round(loss[0][1]), last_loss=_round(loss[-1][1]))
        return [Finding(
            rule="plateau", severity="error",
            title="the learning rate is 0: the weights never change, the loss cannot go down",
            advice="Set a learning rate above 0 (training.lr, e.g. 2e-4 for LoRA, 1e-5 for full fine-tuning) and check the scheduler and warmup.",
            step_start=steps[0], step_end=steps[-1], evidence=evidence,
        )]
    if len(loss) < PLATEAU_MIN_POINTS:
        return _stalled(loss, ctx)
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    third = max(2, len(values) // 3)
    first_level = median(values[:third])
    last_level = median(values[-third:])
    # Wide windows: the lowest of many short medians of a flat noisy series sits well below its start.
    best = min(rolling_median(values, BEST_WINDOW)[BEST_WINDOW - 1 :])
    start_level = median(values[:SMOOTH])
    improvement = (start_level - best) / max(start_level, ZERO)
    trend = (first_level - last_level) / max(first_level, ZERO)
    evidence = {"first_loss": _round(start_level), "best_loss": _round(best), "last_level": _round(last_level),
                "improvement": _round(improvement)}
    if ctx.lr_max is not None:
        evidence["lr_max"] = _round(ctx.lr_max)
    # The first reports may hold a quick drop (a collapse to the token frequencies when the LR is too
    # high): the ordering test looks at what follows it.
    tau = kendall_tau(values[3:])
    evidence["trend_tau"] = _round(tau)
    # The best point of a noisy flat series sits a few noise widths below its start: allow for it.
    noise = relative_noise(values)
    # With a quiet loss the levels are exact enough; with a noisy one a consistent downward ordering
    # (Kendall's tau) vetoes the verdict: levels of noisy points can hide a slow real descent.
    ordered_down = tau <= PLATEAU_MAX_TAU and PLATEAU_NOISE * noise >= PLATEAU_STUCK_REL
    if trend < PLATEAU_STUCK_REL and not ordered_down and improvement < max(PLATEAU_STUCK_REL, PLATEAU_NOISE * noise):
        # Mid-warmup the logged rates are a fraction of the preset's: judge (and quote) the preset's value.
        peak_lr = ctx.preset_lr or ctx.lr_max
        tiny_lr = peak_lr is not None and peak_lr < 1e-6
        lr_advice = (
            f"the learning rate {peak_lr:.2g} is far too low: raise it (training.lr, e.g. 2e-4 for LoRA)" if tiny_lr
            else "the learning rate may be too low (raise training.lr 3–10x) or too high for the schedule "
                 "(a loss stuck at its starting level can also mean updates that overshoot: try ÷5 with warmup)"
        )
        findings.append(Finding(
            rule="plateau", severity="warning",
            title=f"the loss does not go down: {_fmt(start_level)} at the start, {_fmt(best)} at best over {len(values)} logged points",
            advice=(
                f"{_capital(lr_advice)}; check that answers carry labels and the chat template renders "
                "them (tunebench doctor PRESET: supervised tokens, masking, template)."
            ),
            step_start=steps[0], step_end=steps[-1], evidence={"kind": "stuck", **evidence},
        ))
        return findings

    return _stalled(loss, ctx)


def _stalled(loss: list[tuple[int, float]], ctx: _Context) -> list[Finding]:
    """Flat after progress: fine at the end of a schedule, worth a word while the LR is still high."""
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    window = max(PLATEAU_STALL_POINTS, len(values) // 3)
    if len(values) < window + SMOOTH:
        return []
    recent = values[-window:]
    half = len(recent) // 2
    stall = (median(recent[:half]) - median(recent[half:])) / max(median(recent[:half]), ZERO)
    lr_now = ctx.lr_at(steps[-1])
    lr_high = lr_now is not None and ctx.lr_max and lr_now >= 0.5 * ctx.lr_max
    if stall >= PLATEAU_STALL_REL or not lr_high:
        return []
    return [Finding(
        rule="plateau", severity="info",
        title=f"the loss has flattened at about {_fmt(median(recent))} since step {steps[-window]} while the LR is still high",
        advice=(
            "If the level is good, the remaining steps add little (fewer epochs"
            + (", or a decaying schedule: training.scheduler: cosine" if ctx.lr_schedule in (None, "constant", "constant_with_warmup") else "")
            + "); if it is too high, the LR may be too high to settle (÷3) or the data teaches no more."
        ),
        step_start=steps[-window], step_end=steps[-1],
        evidence={"kind": "stalled", "level": _round(median(recent)), "window_improvement": _round(stall),
                  "lr_now": _round(lr_now), "lr_max": _round(ctx.lr_max)},
    )]


def _oscillation_rule(loss: list[tuple[int, float]], ctx: _Context) -> list[Finding]:
    if len(loss) < OSCILLATION_MIN_POINTS:
        return []
    steps = [s for s, _ in loss]
    values = [v for _, v in loss]
    window = max(OSCILLATION_MIN_POINTS, len(values) // 3)
    recent = values[-window:]
    logs = [math.log(max(v, 1e-8)) for v in recent]
    swing = median(abs(b - a) for a, b in zip(logs, logs[1:]))  # the median relative move between reports
    swing_nats = median(abs(b - a) for a, b in zip(recent, recent[1:]))
    half = len(recent) // 2
    level = median(recent[:half])
    progress = (level - median(recent[half:])) / max(level, ZERO)
    early = median(values[:SMOOTH])
    if swing >= OSCILLATION_SWING and swing_nats >= max(OSCILLATION_FLOOR_NATS, 0.05 * early) and progress < swing / 2:
        return [Finding(
            rule="oscillation", severity="warning",
            title=f"the loss swings {swing:.0%} from one logged point to the next without going down (steps {steps[-window]}–{steps[-1]})",
            advice=(
                f"{_capital(ctx.lower_lr_advice(3))}; raise the effective batch "
                "(training.grad_accum or training.batch_size) so each update averages more samples."
            ),
            step_start=steps[-window], step_end=steps[-1],
            evidence={"swing_rel": _round(swing), "swing_nats": _round(swing_nats), "progress": _round(progress),
                      "level": _round(level), "points": window},
            change=ctx.lower_lr_change(3),
        )]
    return []


def _overfitting_rule(loss: list[tuple[int, float]], eval_loss: list[tuple[int, float]], ctx: _Context,
                      epochs: list[tuple[int, float]]) -> list[Finding]:
    if len(eval_loss) < 3:
        return []
    steps = [s for s, _ in eval_loss]
    values = [v for _, v in eval_loss]
    best_index = min(range(len(values)), key=lambda i: values[i])
    best, best_step = values[best_index], steps[best_index]
    after = values[best_index + 1 :]
    if not after:
        return []
    last = values[-1]
    rise = last - best
    rise_rel = rise / max(best, ZERO)
    # Evaluations wobble (the weights move between them): the rise must clear their own noise, and
    # keep going — three evaluations in a row, each no lower than the one before — or be large.
    noise = relative_noise(values) if len(values) >= 4 else 0.0
    needed = best * max(OVERFIT_RISE, OVERFIT_NOISE * noise)
    recent = after[-3:]
    climbing = len(recent) == 3 and all(b >= a * (1 - OVERFIT_WOBBLE) for a, b in zip(recent, recent[1:]))
    persistent = climbing and recent[-1] - recent[0] >= needed / 2 and rise >= needed
    sharp = len(after) >= 2 and min(after[-2:]) >= best * (1 + max(OVERFIT_SHARP_RISE, 1.5 * OVERFIT_NOISE * noise))
    if rise < OVERFIT_FLOOR_NATS:
        persistent = sharp = False
    evidence = {"best_eval_loss": _round(best), "best_step": best_step, "last_eval_loss": _round(last),
                "last_eval_step": steps[-1], "evals_since_best": len(after), "rise_rel": _round(rise_rel),
                "eval_noise_rel": _round(noise)}
    train_at_best = train_now = None
    if loss:
        train_steps = [s for s, _ in loss]
        train_smooth = rolling_median([v for _, v in loss])
        at_best = [v for s, v in zip(train_steps, train_smooth) if s <= best_step]
        train_at_best = at_best[-1] if at_best else train_smooth[0]
        train_now = train_smooth[-1]
        evidence.update(train_loss_at_best=_round(train_at_best), train_loss_now=_round(train_now))
    epoch_at_best = [e for s, e in epochs if s <= best_step]
    if epoch_at_best:
        evidence["epoch_at_best"] = _round(epoch_at_best[-1], 3)

    if (persistent or sharp) and (train_now is None or train_now <= train_at_best * 1.05):
        epoch_hint = f" (about {evidence['epoch_at_best']:.2g} epochs)" if "epoch_at_best" in evidence else ""
        return [Finding(
            rule="overfitting", severity="warning",
            title=(
                f"overfitting: eval loss {_fmt(last)} at step {steps[-1]} against its best {_fmt(best)} at step {best_step}"
                + (f" while the train loss fell to {_fmt(train_now)}" if train_now is not None else "")
            ),
            advice=(
                f"Use the checkpoint at step {best_step} (training.load_best_at_end: true, keep_best); stop there next time"
                f"{epoch_hint} or set training.early_stopping_patience: 2; more data, more dropout (method.lora.dropout: 0.1) "
                "or weight decay, fewer epochs."
            ),
            step_start=best_step, step_end=steps[-1], evidence=evidence,
            change={"training.load_best_at_end": True, "training.early_stopping_patience": 2},
        )]
    if len(after) >= 2 and rise_rel > 0.01 and rise >= OVERFIT_FLOOR_NATS / 2:
        return [Finding(
            rule="overfitting", severity="info",
            title=f"eval loss has not improved since step {best_step} ({_fmt(best)}; now {_fmt(last)})",
            advice="Watch it: if it keeps rising, stop at the best checkpoint (training.early_stopping_patience).",
            step_start=best_step, step_end=steps[-1], evidence={"kind": "stalled", **evidence},
        )]
    return []


def _low_loss_rule(loss: list[tuple[int, float]], ctx: _Context) -> list[Finding]:
    if not loss:
        return []
    early_limit = max(20, int(0.1 * ctx.total_steps)) if ctx.total_steps else 50
    early = [(s, v) for s, v in loss[:3] if s <= early_limit]
    if not early:
        return []
    level = median(v for _, v in early)
    if level >= LOW_LOSS_NATS:
        return []
    return [Finding(
        rule="low_loss_early", severity="error" if level <= ZERO else "warning",
        title=f"the loss is {_fmt(level)} already at step {early[-1][0]}: too good to be true",
        advice=(
            "Labels probably leak (the answer is in the prompt, or the labels are the inputs of another sample) or almost "
            "nothing is supervised (only an end-of-turn token per sample): check the supervised share and the masking "
            "(tunebench doctor PRESET, data.assistant_only_loss)."
        ),
        step_start=early[0][0], step_end=early[-1][0],
        evidence={"early_loss": _round(level), "points": len(early), "first_step": early[0][0]},
    )]


def _grad_rule(grads: list[tuple[int, float]], loss: list[tuple[int, float]], ctx: _Context) -> list[Finding]:
    findings: list[Finding] = []
    if len(grads) < 3:
        return findings
    steps = [s for s, _ in grads]
    values = [v for _, v in grads]

    zero_tail = [v for v in values[-3:] if v <= ZERO]
    if len(zero_tail) == 3:
        findings.append(Finding(
            rule="grad_norm", severity="error",
            title=f"the gradient norm is 0 since step {steps[-3]}: nothing is being trained",
            advice="Check that some parameters are trainable (method) and that labels are not all -100 (tunebench doctor PRESET).",
            step_start=steps[-3], step_end=steps[-1], evidence={"kind": "zero", "last_grad_norms": [_round(v) for v in values[-3:]]},
        ))
        return findings

    if len(values) >= MIN_POINTS:
        smooth = rolling_median(values)
        early = median(values[:SMOOTH])
        floor = min(smooth[SMOOTH - 1 :])
        current = smooth[-1]
        if current >= GRAD_EXPLODE * max(floor, ZERO) and current >= GRAD_EXPLODE_OF_EARLY * early:
            low_index = min(range(SMOOTH - 1, len(smooth)), key=lambda i: smooth[i])
            findings.append(Finding(
                rule="grad_norm", severity="warning",
                title=f"the gradient norm explodes: {_fmt(current)} now, {_fmt(floor)} at its lowest (step {steps[low_index]})",
                advice=(
                    f"{_capital(ctx.lower_lr_advice())}; keep clipping on "
                    "(training.max_grad_norm: 1.0); look for a divergence or spikes in the loss."
                ),
                step_start=steps[low_index], step_end=steps[-1],
                evidence={"kind": "exploding", "grad_norm_now": _round(current), "grad_norm_lowest": _round(floor),
                          "grad_norm_early": _round(early)},
                change=ctx.lower_lr_change(),
            ))
        loss_values = [v for _, v in loss]
        still_high = len(loss_values) >= SMOOTH and median(loss_values[-SMOOTH:]) >= 0.5 * median(loss_values[:SMOOTH])
        if early > ZERO and current <= GRAD_VANISH * early and still_high:
            findings.append(Finding(
                rule="grad_norm", severity="warning",
                title=f"the gradient vanishes: {_fmt(current)} now against {_fmt(early)} early, with the loss still high",
                advice=(
                    "Updates have become negligible: the learning rate may have decayed to nothing, the trainable part is "
                    "too small for the task, or the activations saturate; raise training.lr or train more parameters."
                ),
                step_start=steps[SMOOTH - 1], step_end=steps[-1],
                evidence={"kind": "vanishing", "grad_norm_now": _round(current), "grad_norm_early": _round(early)},
            ))

    clip = ctx.max_grad_norm
    if clip and clip > 0 and len(values) >= SMOOTH:
        clipped = [v for v in values if v > clip]
        share = len(clipped) / len(values)
        ratio = median(values) / clip
        if share >= CLIP_INFO_SHARE:
            heavy = share >= CLIP_WARN_SHARE and ratio >= CLIP_WARN_RATIO
            findings.append(Finding(
                rule="clipping", severity="warning" if heavy else "info",
                title=f"gradient clipping is active at {share:.0%} of logged steps (median grad norm {_fmt(median(values))}, max {clip:g})",
                advice=(
                    f"Every update is cut about {ratio:.0f}x: the effective step is much smaller than training.lr says and "
                    f"the gradients are unusually large; {ctx.lower_lr_advice()} and look for bad samples."
                    if heavy else
                    "Frequent clipping lowers the effective learning rate; fine early in training, but if it lasts, "
                    "the learning rate may be too high."
                ),
                step_start=steps[0], step_end=steps[-1],
                evidence={"kind": "clipping", "share": _round(share), "median_grad_norm": _round(median(values)),
                          "max_grad_norm": clip, "ratio": _round(ratio)},
                change=ctx.lower_lr_change() if heavy else {},
            ))
    return findings


# --------------------------------------------------------------------------- preference stages
# Rules on the metrics TRL logs for dpo, orpo, kto and simpo (presets/stages.py PREFERENCE_METRICS):
# they run only for preference runs, whose loss has another scale (DPO starts at ln 2) and whose
# progress shows in the rewards rather than in the loss alone.


def is_preference_run(stage: str | None, series: Series) -> bool:
    """The stage says it; without one (an old or unreadable preset), the preference metrics do."""
    if stage is not None:
        return stage in STAGES and STAGES[stage].is_preference
    return any(series.get(name) for name in PREFERENCE_METRICS)


def _abs_noise(values: Sequence[float]) -> float:
    """Robust noise of one logged point in the values' own units (rewards can be 0 or negative:
    no logs): second differences cancel a linear trend and have σ·√6, median |·| = 1.65σ."""
    second = [abs(a - 2 * b + c) for a, b, c in zip(values, values[1:], values[2:])]
    return median(second) / 1.65 if second else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _standard_error(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _before(points: list[tuple[int, float]], step: int | None) -> list[tuple[int, float]]:
    return points if step is None else [(s, v) for s, v in points if s < step]


def _pref_accuracy_rule(series: Series, ctx: _Context, cut: int | None) -> list[Finding]:
    """rewards/accuracies stuck at chance (nothing learnt), or clearly below it (labels swapped)."""
    acc = _before(_finite(_clean(series.get("rewards/accuracies"))), cut)
    if len(acc) < PREF_MIN_POINTS:
        return []
    steps = [s for s, _ in acc]
    values = [v for _, v in acc]
    third = max(SMOOTH, len(values) // 3)
    # Batch accuracies are shares of a few pairs (0, 0.5, 1 at batch 2): means, not medians.
    level, early = _mean(values[-third:]), _mean(values[:third])
    error = _standard_error(values[-third:])
    tau = kendall_tau(values[3:])
    margins = _before(_finite(_clean(series.get("rewards/margins"))), cut)
    margin = median(v for _, v in margins[-third:]) if margins else None
    evidence = {"accuracy": _round(level), "accuracy_early": _round(early), "standard_error": _round(error),
                "trend_tau": _round(tau), "points": len(values)}
    if margin is not None:
        evidence["margin"] = _round(margin)
    rising = (level - early >= PREF_ACC_MIN_GAIN and tau > 0) or tau >= PREF_ACC_RISING_TAU
    # TRL counts a tie (equal rewards) as wrong: an accuracy under chance with margins at 0 is no learning.
    # Without a reference (orpo, simpo) the start is the base model's own preference: climbing from
    # under chance is learning.
    inverted = (level + PREF_ACC_NOISE * error < PREF_CHANCE - PREF_ACC_BAND and (margin is None or margin < 0)
                and not rising)
    if inverted:
        return [Finding(
            rule="pref_accuracy", severity="warning",
            title=f"the model prefers the rejected answers: reward accuracy {level:.0%} since step {steps[-third]}",
            advice=(
                "Chosen and rejected are probably swapped: check which column is which (data.columns.chosen and "
                "data.columns.rejected; for kto the judgement, data.columns.label) on a few rows (tunebench doctor PRESET)."
            ),
            step_start=steps[-third], step_end=steps[-1], evidence={"kind": "inverted", **evidence},
        )]
    near_chance = level < PREF_CHANCE + PREF_ACC_BAND
    if not near_chance or rising:
        return []
    return [Finding(
        rule="pref_accuracy", severity="warning",
        title=(f"the reward accuracy stays near chance: {level:.0%} over the last {third} logged points "
               f"({early:.0%} at the start)"),
        advice=(
            f"The model does not learn to tell chosen from rejected: {ctx.raise_lr_advice()} or raise preference.beta "
            "(the loss's gradient grows with it); check that the pairs differ where the model sees them (answers cut "
            "by data.max_length, chosen and rejected identical after the chat template, labels that look random)."
        ),
        step_start=steps[0], step_end=steps[-1], evidence={"kind": "stuck", **evidence}, change=ctx.raise_lr_change(),
    )]


def _pref_margins_rule(series: Series, ctx: _Context, cut: int | None) -> list[Finding]:
    """rewards/margins falling back from their best, or flat while the learning rate is still high."""
    margins = _before(_finite(_clean(series.get("rewards/margins"))), cut)
    if len(margins) < PREF_MIN_POINTS:
        return []
    steps = [s for s, _ in margins]
    values = [v for _, v in margins]
    noise = _abs_noise(values)
    wide = rolling_median(values, BEST_WINDOW)
    # The level now over as wide a window as the best's, which lies before it: a few noisy batches
    # do not make a fall.
    recent_window = max(BEST_WINDOW, len(values) // 5)
    best_index = max(range(BEST_WINDOW - 1, max(BEST_WINDOW, len(wide) - recent_window)), key=lambda i: wide[i])
    best, current = wide[best_index], median(values[-recent_window:])
    acc = _before(_finite(_clean(series.get("rewards/accuracies"))), cut)
    accuracy = _mean([v for _, v in acc[-max(SMOOTH, len(acc) // 3):]]) if acc else None
    evidence = {"best_margin": _round(best), "best_step": steps[best_index], "margin_now": _round(current),
                "noise": _round(noise), "points": len(values)}
    if accuracy is not None:
        evidence["accuracy_now"] = _round(accuracy)
    if best > 0 and best - current > max(PREF_MARGIN_FALL * best, PREF_MARGIN_NOISE * noise) and values[-1] < best:
        return [Finding(
            rule="pref_margins", severity="warning",
            title=f"the reward margins shrink: {_fmt(current)} now against {_fmt(best)} around step {steps[best_index]}",
            advice=(
                f"The preference learnt so far is being undone: {ctx.lower_lr_advice(3)}; if the eval margins "
                "(eval_rewards/margins) fall too, keep the checkpoint near the best step (training.keep_best)."
            ),
            step_start=steps[best_index], step_end=steps[-1], evidence={"kind": "shrinking", **evidence},
            change=ctx.lower_lr_change(3),
        )]
    window = max(PLATEAU_STALL_POINTS, len(values) // 3)
    recent = values[-window:]
    half = len(recent) // 2
    before, after = median(recent[:half]), median(recent[half:])
    growth = after - before
    lr_now = ctx.lr_at(steps[-1])
    lr_low = lr_now is not None and ctx.lr_max and lr_now < 0.5 * ctx.lr_max
    saturated = accuracy is not None and accuracy >= 0.95  # every pair told apart: growing further only overfits
    if lr_low or saturated or growth > PREF_MARGIN_STALL * max(abs(before), abs(after), ZERO):
        return []
    severity = "warning" if accuracy is not None and accuracy < PREF_MARGIN_STALL_ACC else "info"
    return [Finding(
        rule="pref_margins", severity=severity,
        title=(f"the reward margins stopped growing at about {_fmt(after)} since step {steps[-window]}"
               + (f", reward accuracy {accuracy:.0%}" if accuracy is not None else "")),
        advice=(
            "With the learning rate still high the preference no longer improves: the remaining pairs may be "
            "mislabelled or too alike to learn (look at the pairs the model gets wrong), or the steps too large to "
            f"settle ({ctx.lower_lr_advice(3)}); a larger preference.beta keeps the model nearer its reference."
        ),
        step_start=steps[-window], step_end=steps[-1],
        evidence={"kind": "stalled", **evidence, "window_growth": _round(growth), "lr_now": _round(lr_now or 0.0)},
    )]


def _pref_chosen_rule(series: Series, ctx: _Context, cut: int | None) -> list[Finding]:
    """The chosen reward going down with the rejected one: the preferred answers lose likelihood too."""
    chosen = _before(_finite(_clean(series.get("rewards/chosen"))), cut)
    rejected = _before(_finite(_clean(series.get("rewards/rejected"))), cut)
    if len(chosen) < PREF_CHOSEN_MIN_POINTS or len(rejected) < PREF_CHOSEN_MIN_POINTS:
        return []
    steps = [s for s, _ in chosen]
    values = [v for _, v in chosen]
    rejected_values = [v for _, v in rejected]
    noise = _abs_noise(values)
    # The start is where both rewards are 0 (the reference's own likelihoods); the level now over a
    # wide window, since a batch of a few pairs moves the rewards a lot.
    window = max(BEST_WINDOW, len(values) // 5)
    chosen_early, chosen_now = median(values[:SMOOTH]), median(values[-window:])
    rejected_early, rejected_now = median(rejected_values[:SMOOTH]), median(rejected_values[-window:])
    chosen_fall, rejected_fall = chosen_early - chosen_now, rejected_early - rejected_now
    tau = kendall_tau(values[SMOOTH:])
    if chosen_fall <= max(PREF_CHOSEN_NOISE * noise, ZERO) or tau > PREF_CHOSEN_TAU or rejected_fall <= 0:
        return []
    share = chosen_fall / rejected_fall
    evidence = {"chosen_early": _round(chosen_early), "chosen_now": _round(chosen_now),
                "rejected_early": _round(rejected_early), "rejected_now": _round(rejected_now),
                "share_of_rejected_fall": _round(share), "trend_tau": _round(tau), "noise": _round(noise)}
    logps = [v for _, v in _before(_finite(_clean(series.get("logps/chosen"))), cut)]
    if len(logps) >= 2 * SMOOTH:
        evidence.update(logps_chosen_early=_round(median(logps[:SMOOTH])),
                        logps_chosen_now=_round(median(logps[-window:])))
    if share >= PREF_CHOSEN_SHARE:
        return [Finding(
            rule="pref_chosen", severity="warning",
            title=(f"the chosen reward falls with the rejected one: {_fmt(evidence['chosen_early'])} → "
                   f"{_fmt(evidence['chosen_now'])} ({share:.0%} of the rejected reward's fall)"),
            advice=(
                "The preferred answers lose likelihood too: the margin grows by pushing both answers down, which "
                "degrades generations. Raise preference.beta (stay nearer the reference), "
                f"{ctx.lower_lr_advice(3)}, or train sft on the chosen answers first and start from that run "
                "(model.start_from); stage orpo keeps an SFT term on the chosen answers."
            ),
            step_start=steps[0], step_end=steps[-1], evidence={"kind": "falling", **evidence},
            change=ctx.lower_lr_change(3),
        )]
    return [Finding(
        rule="pref_chosen", severity="info",
        title=(f"the chosen reward drifts down ({_fmt(evidence['chosen_early'])} → {_fmt(evidence['chosen_now'])}) "
               "while the rejected one falls faster"),
        advice="Common in DPO while the margins grow; if it keeps falling, compare answers on the probes and raise preference.beta.",
        step_start=steps[0], step_end=steps[-1], evidence={"kind": "drifting", **evidence},
    )]


def _pref_easy_rule(loss: list[tuple[int, float]], series: Series, ctx: _Context) -> list[Finding]:
    """A preference loss near zero within the first steps: the pairs are too easy, or the answer leaks."""
    early_limit = max(20, int(0.1 * ctx.total_steps)) if ctx.total_steps else 50
    early = [(s, v) for s, v in loss if s <= early_limit]
    if len(early) < 3:
        return []
    smooth = rolling_median([v for _, v in early], 3)
    low_index = next((i for i in range(2, len(smooth)) if smooth[i] < PREF_EASY_LOSS_NATS), None)
    if low_index is None:
        return []
    step = early[low_index][0]
    evidence = {"loss": _round(smooth[low_index]), "step": step, "first_loss": _round(early[0][1]),
                "early_limit": early_limit}
    for name, key in (("rewards/accuracies", "accuracy"), ("rewards/margins", "margin")):
        points = [v for s, v in _finite(_clean(series.get(name))) if s <= step]
        if points:
            evidence[key] = _round(points[-1])
    return [Finding(
        rule="pref_easy", severity="warning",
        title=f"the preference loss is {_fmt(smooth[low_index])} already at step {step}: the pairs are too easy",
        advice=(
            "The model tells chosen from rejected at a glance, so it learns little about quality: rejected answers "
            "that are empty, cut short (data.max_length), in another format or language, or a prompt that contains "
            "the chosen answer. Check the pairs (tunebench doctor PRESET) and make the rejected answers plausible."
        ),
        step_start=early[0][0], step_end=step, evidence=evidence,
    )]


def _preference_rules(loss: list[tuple[int, float]], series: Series, ctx: _Context, cut: int | None) -> list[Finding]:
    findings = _pref_accuracy_rule(series, ctx, cut)
    margins = _pref_margins_rule(series, ctx, cut)
    if findings:
        # Margins flat at zero are the same finding as an accuracy stuck at chance.
        margins = [f for f in margins if f.evidence.get("kind") != "stalled"]
    findings += margins
    findings += _pref_chosen_rule(series, ctx, cut)
    findings += _pref_easy_rule(loss, series, ctx)
    return findings


# --------------------------------------------------------------------------- entry point


def analyse(
    series: Series,
    *,
    precision: str | None = "auto",
    lr_schedule: str | None = None,
    max_grad_norm: float | None = None,
    total_steps: int | None = None,
    preset_lr: float | None = None,
    stage: str | None = None,
) -> list[Finding]:
    """Findings on a run's metrics.

    `series` maps a metric name (loss, eval_loss, grad_norm, lr, epoch) to (step, value) pairs.
    `precision` ("fp16", "bf16", "fp32" or "auto") shapes the NaN advice; `max_grad_norm` enables
    the clipping rule; `total_steps` tells how early "early" is; `preset_lr` is the preset's
    training.lr, which the advice quotes (without it, the advice can only name the highest logged rate).
    `stage` (presets/stages.py; None: told by the metrics) turns on the preference rules, which replace
    the SFT rules that misread a preference loss (divergence, spikes, plateau, oscillation, early low loss).
    """
    ctx = _Context(series, precision, lr_schedule, max_grad_norm, total_steps, preset_lr)
    ctx.preference = is_preference_run(stage, series)
    all_loss = _clean(series.get("loss"))
    loss = _finite(all_loss)
    eval_loss = _finite(_clean(series.get("eval_loss")))
    grads = _finite(_clean(series.get("grad_norm")))
    epochs = _finite(_clean(series.get("epoch")))

    findings = _nan_rule(series, ctx)
    nan_step = None
    if any(f.rule == "nan" and f.severity == "error" for f in findings):
        nan_step = findings[0].step_start
        # After a NaN the rest of the curve says nothing more: the NaN is the finding.
        loss = [(s, v) for s, v in loss if s < findings[0].step_start]
        grads = [(s, v) for s, v in grads if s < findings[0].step_start]
    if ctx.preference:
        # A preference loss creeps down from ln 2 and, averaged over a few pairs, jumps with each batch's
        # hardest pair: the SFT readings of its shape (divergence, spikes, plateau, oscillation, early
        # low loss) misfire. The reward accuracy and margins tell progress and its undoing instead.
        findings += [f for f in _plateau_rule(loss, ctx) if f.evidence.get("kind") == "zero_lr"]
        findings += _preference_rules(loss, series, ctx, nan_step)
    else:
        findings += _divergence_rule(loss, ctx)
        diverging = any(f.rule == "divergence" for f in findings)
        findings += _spike_rule(loss, ctx)
        if not diverging:
            # A diverging loss is also flat-or-noisy; the divergence is the finding that explains it.
            findings += _plateau_rule(loss, ctx)
            findings += _oscillation_rule(loss, ctx)
        elif ctx.lr and max(v for _, v in ctx.lr) <= ZERO:
            findings += _plateau_rule(loss, ctx)
    findings += _overfitting_rule(loss, eval_loss, ctx, epochs)
    if not ctx.preference:
        findings += _low_loss_rule(loss, ctx)
    findings += _grad_rule(grads, loss, ctx)
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.step_start if f.step_start is not None else -1))
    return findings


def worst_severity(findings: Iterable[Finding]) -> str | None:
    ranks = [SEVERITY_RANK[f.severity] for f in findings]
    if not ranks:
        return None
    return {v: k for k, v in SEVERITY_RANK.items()}[max(ranks)]


def series_from_rows(rows: Iterable) -> dict[str, list[tuple[int, float]]]:
    """Series from (step, name, value) rows — store MetricRows, or tuples."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        if isinstance(row, (tuple, list)):
            step, name, value = row[0], row[1], row[2]
        else:
            step, name, value = row.step, row.name, row.value
        if step is None or value is None:
            continue
        series.setdefault(name, []).append((int(step), float(value)))
    return series


def series_from_jsonl(lines: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """Series from a run folder's metrics.jsonl ("metrics" records; "nan"/"inf" strings are read back)."""
    import json

    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash: the rest of the file is still good
        if record.get("type") != "metrics" or record.get("step") is None:
            continue
        for name, value in record.items():
            if name in ("type", "step", "time"):
                continue
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                rows.append((record["step"], name, value))
            elif isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
                rows.append((record["step"], name, float(value)))
    return series_from_rows(rows)
