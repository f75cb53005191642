"""Comparing runs: one metric of 2–6 runs on a shared axis, the settings that differ between their
frozen presets, and each run's final and best figures; and finding runs to compare: a filter
query and sort orders over the run list. Plain functions over the run store: the Runs and Compare
screens and `tunebench compare | ls` call them. No Textual, no torch.

Reading stays fast on long runs: one statement per run reads only the metric drawn (and, aligned
by tokens, the tokens counter) through an index on (run, metric), and SQLite cuts it into ranges
that each give their lowest and highest row (Store.metric_series): a spike survives, and neither
Python nor the plot ever holds 50 000 points.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

from presets.errors import TunebenchError
from presets.stages import PREFERENCE_METRICS

MIN_RUNS, MAX_RUNS = 2, 6
# How runs line up: by optimizer step, by training tokens seen (engine/callback.py logs the counter),
# or by running time since each run's first report.
ALIGNMENTS = ("step", "tokens", "time")
ALIGN_LABELS = {"step": "step", "tokens": "tokens seen", "time": "time (s)"}
TOKENS_METRIC = "tokens_seen"
TOKEN_BUCKETS = 1000
# What the Compare screen offers first (a run's other metrics follow, by name).
METRICS = ("loss", "eval_loss", "grad_norm", "lr", "tokens_per_s",
           *PREFERENCE_METRICS, *(f"eval_{name}" for name in PREFERENCE_METRICS))
# Figures for the table: the losses, speed, and what a preference run reports.
FIGURE_METRICS = ("loss", "eval_loss", "tokens_per_s", "rewards/margins", "rewards/accuracies", "eval_rewards/margins",
                  "eval_rewards/accuracies")
# Settings that tell runs apart anyway (the legend names them) or never matter to the result.
IGNORED_SETTINGS = ("name", "description")


class CompareError(TunebenchError, ValueError):
    """Runs that cannot be compared (too few, too many, the same run twice)."""


def higher_is_better(metric: str) -> bool:
    """Rewards, margins, accuracies and throughput grow when training goes well; losses, norms, KL do not."""
    base = metric.removeprefix("eval_")
    return base.startswith(("rewards/margins", "rewards/accuracies", "rewards/chosen")) or base in (
        "tokens_per_s", "accuracy", "mfu")


@dataclass
class RunLine:
    """One run's metric on the chosen axis, downsampled for drawing."""

    run_id: str
    label: str
    xs: list[float]
    ys: list[float]
    rows: int  # rows read before downsampling
    note: str = ""  # why a run has no points on this axis
    figure: "Figure | None" = None  # final and best of the metric, from every row read


@dataclass
class Figure:
    metric: str
    final: float | None
    best: float | None
    best_step: int | None


@dataclass
class RunFigures:
    run_id: str
    name: str
    state: str
    step: int
    total_steps: int | None
    running_s: float | None
    tags: list[str]
    note: str
    figures: dict[str, Figure] = field(default_factory=dict)


@dataclass
class Comparison:
    runs: list  # jobs.store.Run, in the order asked for
    differences: list[tuple[str, list[Any]]]  # (dotted key, each run's value); only keys that differ
    figures: list[RunFigures]
    metrics: list[str]  # metric names any of the runs has, METRICS' order first

    def as_json(self) -> dict:
        return {
            "runs": [{"id": r.id, "name": r.name, "state": r.state, "tags": r.tags, "note": r.note} for r in self.runs],
            "differences": [{"key": key, "values": {run.id: value for run, value in zip(self.runs, values)}}
                            for key, values in self.differences],
            "figures": {f.run_id: {"step": f.step, "total_steps": f.total_steps, "running_s": f.running_s,
                                   **{name: {"final": _json_float(fig.final), "best": _json_float(fig.best),
                                             "best_step": fig.best_step} for name, fig in f.figures.items()}}
                        for f in self.figures},
            "metrics": self.metrics,
        }


def resolve_runs(store, refs: Iterable[str]) -> list:
    """The runs named (ids, prefixes or names), checked: 2 to 6 different runs."""
    runs = [store.resolve_run(ref) for ref in refs]
    seen: set[str] = set()
    for run in runs:
        if run.id in seen:
            raise CompareError(f"{run.name} ({run.id}) is named twice", "name each run once")
        seen.add(run.id)
    if not MIN_RUNS <= len(runs) <= MAX_RUNS:
        raise CompareError(f"{len(runs)} run(s) given; compare takes {MIN_RUNS} to {MAX_RUNS}",
                           "name 2 to 6 runs (`tunebench ls` lists them)")
    return runs


def compare(store, runs: list, *, figures: bool = True) -> Comparison:
    """Settings that differ, figures (FIGURE_METRICS; the Compare screen reads its own, of the
    metric drawn) and the metrics available: everything but the plotted lines."""
    names: set[str] = set()
    for run in runs:
        names.update(store.metric_names(run.id))
    return Comparison(runs, setting_differences([run.preset_yaml for run in runs]),
                      [run_figures(store, run) for run in runs] if figures else [], ordered_metrics(names))


def ordered_metrics(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


# --------------------------------------------------------------------------- series


def load_lines(store, runs: list, metric: str, *, align: str = "step", max_points: int = 400) -> list[RunLine]:
    """Each run's `metric` on the `align` axis, downsampled to at most about `max_points` points."""
    if align not in ALIGNMENTS:
        raise CompareError(f"unknown alignment {align!r}", f"one of: {', '.join(ALIGNMENTS)}")
    # One thread a run: SQLite lets go of the GIL while it scans, and each thread has its own connection.
    with ThreadPoolExecutor(max_workers=max(1, min(len(runs), os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda run: _run_line(store, run, metric, align, max_points), runs))


def _run_line(store, run, metric: str, align: str, max_points: int) -> RunLine:
    count, points = store.metric_series(run.id, metric, max(1, max_points // 2))  # drawn small in SQLite
    if not points:
        return RunLine(run.id, run.name, [], [], count, f"no {metric}")
    # The best row is one of the points: each range gave its lowest and its highest.
    pick = max if higher_is_better(metric) else min
    best = pick(points, key=lambda point: point[1])
    figure = Figure(metric, store.metric_last(run.id, metric), best[1], best[0])
    if align == "step":
        xs = [float(step) for step, _, _ in points]
    elif align == "time":
        # From the run's first report of any metric (an eval_loss starts late, not at 0); time a
        # resumed run sat stopped between attempts is counted: reports carry no attempt.
        start = store.first_metric_time(run.id) or points[0][2]
        xs = [t - start for _, _, t in points]
    else:
        # The counter only grows: drawn small too, it places each point within a range of exact.
        _, counter = store.metric_series(run.id, TOKENS_METRIC, TOKEN_BUCKETS)
        if not counter:
            return RunLine(run.id, run.name, [], [], count, f"no {TOKENS_METRIC} recorded", figure)
        xs = tokens_at([step for step, _, _ in points], [(step, value) for step, value, _ in counter])
    return RunLine(run.id, run.name, xs, [value for _, value, _ in points], count, "", figure)


def tokens_at(steps: list[int], counter: list[tuple[int, float]]) -> list[float]:
    """Tokens seen at each step: the counter's last report at or before it (a step before the first
    report is placed in proportion to it)."""
    counter = sorted(counter)
    known = [step for step, _ in counter]
    out = []
    for step in steps:
        i = bisect.bisect_right(known, step) - 1
        if i >= 0:
            out.append(float(counter[i][1]))
        else:
            first_step, first_tokens = counter[0]
            out.append(float(first_tokens) * step / first_step if first_step else float(first_tokens))
    return out


# --------------------------------------------------------------------------- settings and figures


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested preset as dotted keys ("training.lr"); lists are values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def setting_differences(preset_texts: list[str]) -> list[tuple[str, list[Any]]]:
    """The dotted keys whose values are not the same in every frozen preset (a key one preset lacks
    reads None), in the order the presets list them."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where built: a preset parses 10× faster
    flat = []
    for text in preset_texts:
        try:
            data = yaml.load(text or "", Loader=loader) or {}
        except yaml.YAMLError:
            data = {}
        flat.append(flatten(data if isinstance(data, dict) else {}))
    keys = list(dict.fromkeys(key for preset in flat for key in preset))
    return [(key, [preset.get(key) for preset in flat]) for key in keys
            if key.split(".")[0] not in IGNORED_SETTINGS and len({repr(p.get(key)) for p in flat}) > 1]


def setting_text(value: Any) -> str:
    """A setting's value as a diff shows it: `—` for one a preset does not have."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_figures(store, run, metrics: Iterable[str] = FIGURE_METRICS) -> RunFigures:
    """Final (last finite) and best value of each of `metrics` the run has, with the best one's step."""
    out = RunFigures(run.id, run.name, run.state, run.step, run.total_steps, run.running_time(), run.tags, run.note)
    for name in metrics:
        summary = store.metric_summary(run.id, name, higher_is_better=higher_is_better(name))
        if summary is not None:
            out.figures[name] = Figure(name, *summary)
    return out


def _json_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return str(value)


# --------------------------------------------------------------------------- finding runs

# Fields a filter term can name (`state:running`, `tag:baseline`); a bare term searches them all.
FILTER_FIELDS = ("name", "state", "preset", "method", "tag", "kind", "note", "id")


@functools.lru_cache(maxsize=2048)
def preset_facts(preset_yaml: str) -> tuple[str, str, str]:
    """(preset name, method, stage) of a frozen preset; "" where it does not say. Cached: a filter
    typed key by key reads every run's preset each time."""
    import yaml

    try:
        data = yaml.load(preset_yaml or "", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError:
        data = {}
    if not isinstance(data, dict):
        return "", "", ""
    method = data.get("method")
    method = method.get("name") if isinstance(method, dict) else method
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    return str(data.get("name") or ""), str(method or ""), str(data.get("stage") or training.get("stage") or "")


def _fields(run) -> dict[str, list[str]]:
    preset, method, stage = preset_facts(run.preset_yaml)
    return {"name": [run.name], "state": [run.state], "preset": [preset], "method": [m for m in (method, stage) if m],
            "tag": list(run.tags), "kind": [run.kind], "note": [run.note], "id": [run.id]}


class FilterError(TunebenchError, ValueError):
    """A filter term naming a field there is none of."""


def parse_filter(query: str) -> list[tuple[str | None, str]]:
    """Terms of a query: `field:text` or a bare text (any field); every term must match. `#x` is `tag:x`."""
    terms: list[tuple[str | None, str]] = []
    for word in (query or "").split():
        if word.startswith("#") and len(word) > 1:
            terms.append(("tag", word[1:].lower()))
            continue
        head, sep, rest = word.partition(":")
        if sep and head.lower() in FILTER_FIELDS:
            terms.append((head.lower(), rest.lower()))
        elif sep and head and rest and head.isalpha():
            raise FilterError(f"{head!r} in {word!r} is not a field to filter on",
                              f"one of: {', '.join(FILTER_FIELDS)} (e.g. state:running tag:baseline)")
        else:
            terms.append((None, word.lower()))
    return terms


def run_matches(run, terms: list[tuple[str | None, str]]) -> bool:
    """Every term matches: a field's text contains it (a tag must equal it, so `tag:v1` is not `v10`)."""
    fields = _fields(run)
    for name, text in terms:
        if name == "tag":
            if text not in fields["tag"]:
                return False
            continue
        values = fields[name] if name else [v for vs in fields.values() for v in vs]
        if not any(text in value.lower() for value in values):
            return False
    return True


def filter_runs(runs: list, query: str) -> list:
    terms = parse_filter(query)
    return [run for run in runs if run_matches(run, terms)] if terms else list(runs)


_LAST = float("inf")
# Sort orders by the Runs table's column keys: a key function of (run, now). Runs without a value
# sort last either way (sort_runs flips only those that have one).
SORT_KEYS: dict[str, Any] = {
    "name": lambda run, now: run.name.lower(),
    "state": lambda run, now: run.state,
    "progress": lambda run, now: run.progress,
    "eta": lambda run, now: _eta(run, now),
    "step": lambda run, now: run.step,
    "loss": lambda run, now: run.last_loss,
    "best": lambda run, now: run.best_eval_loss,
    "elapsed": lambda run, now: run.running_time(now),
    "created": lambda run, now: run.created_at,
    "kind": lambda run, now: run.kind,
    "gpu": lambda run, now: run.gpu,
    "findings": lambda run, now: run.findings,
    "tags": lambda run, now: " ".join(run.tags) or None,
}


def _eta(run, now: float | None) -> float | None:
    """Seconds a running run has left at its average pace so far (the ETA column's order)."""
    elapsed = run.running_time(now)
    if run.state != "running" or not run.step or not run.total_steps or not elapsed:
        return None
    return elapsed / run.step * max(0, run.total_steps - run.step)


def sort_runs(runs: list, column: str, *, descending: bool = False, now: float | None = None) -> list:
    """Runs by one column; ties keep their order, runs with no value (no loss yet) come last."""
    if column not in SORT_KEYS:
        raise FilterError(f"cannot sort by {column!r}", f"one of: {', '.join(SORT_KEYS)}")
    key = SORT_KEYS[column]
    valued = [(key(run, now), run) for run in runs]
    present = [(value, run) for value, run in valued if value is not None and value == value]  # not None, not NaN
    missing = [run for value, run in valued if value is None or value != value]
    present.sort(key=lambda pair: pair[0], reverse=descending)
    return [run for _, run in present] + missing
