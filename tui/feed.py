"""The dashboard's reader: one run's new metric rows, events, log lines and findings per poll.

`DashboardFeed.read()` blocks (SQLite, the log file) and runs in the dashboard's thread worker, one
call at a time; it returns a `DashboardUpdate` of small, ready-to-draw values (downsampled points,
formatted figures) that the screen applies on the event loop. No Textual here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from presets.stages import PREFERENCE_METRICS, STAGES
from tui import format as fmt
from tui.series import Pace, SeriesSet, recent_pace

GIB = 2**30


@dataclass(frozen=True)
class LineSpec:
    label: str
    metric: str
    colour: str  # theme variable
    scale: float = 1.0  # divide values by this for display (bytes → GiB)


# Plot id → its lines. Memory: what PyTorch holds (allocated), what its caching allocator reserved
# at peak, and what the device reports used, against the device total.
PLOTS: dict[str, tuple[LineSpec, ...]] = {
    "loss": (LineSpec("train", "loss", "primary"), LineSpec("eval", "eval_loss", "warning")),
    "grad_norm": (LineSpec("grad norm", "grad_norm", "accent"),),
    "lr": (LineSpec("lr", "lr", "success"),),
    "memory": (
        LineSpec("alloc", "mem_allocated", "primary", GIB),
        LineSpec("reserved", "mem_peak_reserved", "accent", GIB),
        LineSpec("used", "gpu_mem_used", "warning", GIB),
        LineSpec("total", "gpu_mem_total", "error", GIB),
    ),
    "tokens": (LineSpec("tokens/s", "tokens_per_s", "secondary"),),
}
# Preference runs (presets/stages.py: dpo, orpo, kto, simpo) add two plots of TRL's rewards: how well
# the model tells chosen from rejected (margins, accuracy; KL for KTO), and the rewards themselves.
PREFERENCE_PLOTS: dict[str, tuple[LineSpec, ...]] = {
    "preference": (
        LineSpec("margin", "rewards/margins", "primary"),
        LineSpec("acc", "rewards/accuracies", "success"),
        LineSpec("eval acc", "eval_rewards/accuracies", "warning"),
        LineSpec("kl", "kl", "accent"),
    ),
    "rewards": (LineSpec("chosen", "rewards/chosen", "success"), LineSpec("rejected", "rewards/rejected", "error")),
}
PLOT_TITLES = {"loss": "loss", "grad_norm": "grad norm", "lr": "learning rate", "memory": "GPU memory (GiB)",
               "tokens": "tokens/s", "preference": "preference", "rewards": "rewards"}


@dataclass(frozen=True)
class PlotLine:
    label: str
    colour: str
    raw: tuple[list[float], list[float]]
    smoothed: tuple[list[float], list[float]]
    last: float | None


@dataclass
class DashboardUpdate:
    run: Any  # jobs.store.Run, or None when the run was deleted
    plots: dict[str, list[PlotLine]] | None = None  # None: no new metric since the last update
    figures: list[tuple[str, str]] = field(default_factory=list)
    log_text: str = ""
    log_truncated: bool = False
    events: list = field(default_factory=list)
    findings: list[dict] | None = None  # None: unchanged
    pace: Pace | None = None
    rows_read: int = 0
    preference: bool = False  # a preference stage's run: PREFERENCE_PLOTS are shown


class DashboardFeed:
    def __init__(self, backend, run_id: str, *, max_points: int = 600, smoothing: float = 0.9):
        self.backend = backend
        self.run_id = run_id
        self.series = SeriesSet(max_points, smoothing)
        self.log_offset = 0
        self.last_event_id = 0
        self.findings_seen: tuple | None = None
        self.reads = 0
        self.stage: str | None = None  # the frozen preset's stage, read once

    def read(self) -> DashboardUpdate:
        store = self.backend.store
        run = store.get_run(self.run_id)
        if run is None:
            return DashboardUpdate(None)
        rows = store.metrics_since(self.run_id, self.series.last_id)
        added = self.series.add_rows(rows)
        update = DashboardUpdate(run, rows_read=added, preference=self.is_preference(run))
        if added or self.reads == 0:
            update.plots = self.plot_lines()
        update.figures = self.figures(run)
        update.pace = recent_pace(self.series.get("loss") or _longest(self.series), run.total_steps,
                                  since=run.started_at) if self.series.series else None
        chunk = self.backend.read_log(self.run_id, self.log_offset)
        self.log_offset = chunk.offset
        update.log_text, update.log_truncated = chunk.text, chunk.truncated
        update.events = store.events_since(self.run_id, self.last_event_id)
        if update.events:
            self.last_event_id = update.events[-1].id
        # An updated finding leaves the count as it was: its time tells that it changed.
        findings_state = (run.findings, store.findings_updated_at(self.run_id) if run.findings else None)
        if findings_state != self.findings_seen:
            update.findings = store.findings(self.run_id)
            self.findings_seen = findings_state
        self.reads += 1
        return update

    def is_preference(self, run) -> bool:
        """The run's stage says it (shown from the first poll), or its preference metrics do."""
        if self.stage is None:
            self.stage = preset_stage(run.preset_yaml)
        if self.stage in STAGES:
            return STAGES[self.stage].is_preference
        return any(self.series.get(name) for name in PREFERENCE_METRICS)

    def plot_lines(self) -> dict[str, list[PlotLine]]:
        plots: dict[str, list[PlotLine]] = {}
        for plot_id, specs in {**PLOTS, **PREFERENCE_PLOTS}.items():
            lines = []
            for spec in specs:
                series = self.series.get(spec.metric)
                if series is None or not len(series):
                    continue
                raw = _scaled(series.points(False), spec.scale)
                smoothed = _scaled(series.points(True), spec.scale)
                last = series.last / spec.scale if series.last is not None else None
                lines.append(PlotLine(spec.label, spec.colour, raw, smoothed, last))
            plots[plot_id] = lines
        return plots

    def figures(self, run) -> list[tuple[str, str]]:
        info = run.info or {}
        series = self.series
        rows: list[tuple[str, str]] = []
        trainable, total = info.get("trainable_params"), info.get("total_params")
        if trainable is not None:
            share = f" ({trainable / total:.1%})" if total else ""
            rows.append(("trainable", f"{fmt.count(trainable)} / {fmt.count(total)}{share}" if total else fmt.count(trainable)))
        tokens = series.last("tokens_seen")
        rows.append(("tokens seen", fmt.count(tokens) if tokens is not None else "—"))
        if run.best_eval_loss is not None:
            rows.append(("best eval", f"{fmt.number(run.best_eval_loss)} @ step {run.best_eval_step}"))
        else:
            rows.append(("best eval", "—"))
        peak = _max(series, "mem_peak_allocated")
        reserved = _max(series, "mem_peak_reserved")
        if peak is not None or reserved is not None:
            rows.append(("peak memory", f"{fmt.size(peak)}, {fmt.gib(reserved)} reserved"))
        else:
            rows.append(("peak memory", "— (no CUDA)" if info.get("device") in (None, "cpu") else "—"))
        speed = series.last("tokens_per_s")
        rows.append(("tokens/s", f"{speed:,.0f}" if speed is not None else "—"))
        # On CUDA only (engine.callback): model FLOPs utilisation and the GPU's health, latest values.
        mfu, tflops = series.last("mfu"), series.last("tflops")
        if tflops is not None:
            rows.append(("MFU", f"{mfu:.1%} · {tflops:,.0f} TFLOP/s" if mfu is not None else f"— · {tflops:,.0f} TFLOP/s"))
        health = gpu_health_text(series.last("gpu_util"), series.last("gpu_power_w"), series.last("gpu_temp_c"))
        if health:
            rows.append(("GPU", health))
        epoch = series.last("epoch")
        if epoch is not None:
            rows.append(("epoch", f"{epoch:.2f}"))
        setup = " · ".join(str(info[k]) for k in ("method", "precision", "device") if info.get(k))
        if setup:
            rows.append(("setup", setup))
        return rows


def preset_stage(preset_yaml: str | None) -> str:
    """The stage a frozen preset names ("sft" when it names none); "" when the YAML cannot be read."""
    import yaml

    try:
        data = yaml.safe_load(preset_yaml or "")
    except yaml.YAMLError:
        return ""
    if not isinstance(data, dict):
        return ""
    return str(data.get("stage") or "sft")


def gpu_health_text(util: float | None, power_w: float | None, temp_c: float | None) -> str:
    """`87% · 250 W · 65 °C`, with only the readings NVML gave; empty when none."""
    parts = []
    if util is not None:
        parts.append(f"{util:.0f}%")
    if power_w is not None:
        parts.append(f"{power_w:.0f} W")
    if temp_c is not None:
        parts.append(f"{temp_c:.0f} °C")
    return " · ".join(parts)


def _scaled(points: tuple[list[float], list[float]], scale: float) -> tuple[list[float], list[float]]:
    xs, ys = points
    return (xs, ys) if scale == 1.0 else (xs, [y / scale for y in ys])


def _max(series: SeriesSet, name: str) -> float | None:
    found = series.get(name)
    return found.maximum() if found else None


def _longest(series: SeriesSet):
    return max(series.series.values(), key=len)
