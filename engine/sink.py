"""Where a run's metrics, events and checkpoints go.

The engine knows only this interface. `JsonlSink` (here) writes `metrics.jsonl` and the console;
the jobs layer supplies a sink that writes to the run store. `should_stop()` is how a cancel or a
shutdown reaches the training loop: the callback reads it at every step boundary.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal, TextIO

StopReason = Literal["cancel", "interrupt", "nan", "diverged", "early_stop"]
Level = Literal["debug", "info", "warning", "error"]


class Sink:
    """No-op base: subclasses override what they record."""

    def run_started(self, info: dict[str, Any]) -> None:
        """Once, before the first step: total_steps, trainable_params, total_params, train_samples, …"""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """At each logging / evaluation step: loss, grad_norm, lr, epoch, tokens_per_s, eval_loss, …"""

    def event(self, level: Level, text: str, step: int | None = None) -> None:
        """Something a human should read: phase changes, warnings, errors with advice."""

    def checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        """A checkpoint was written to `path` at `step`."""

    def checkpoint_removed(self, step: int, path: str) -> None:
        """A checkpoint was pruned by the keep policy."""

    def finding(self, finding: dict[str, Any]) -> None:
        """The doctor found something (see engine.doctor.Finding.to_dict)."""

    def should_stop(self) -> StopReason | None:
        """Polled at each step boundary; a reason stops the run after saving a checkpoint."""
        return None

    def close(self) -> None:
        """Flush whatever is buffered."""


class MultiSink(Sink):
    def __init__(self, *sinks: Sink):
        self.sinks = [s for s in sinks if s is not None]

    def run_started(self, info):
        for s in self.sinks:
            s.run_started(info)

    def metrics(self, step, values):
        for s in self.sinks:
            s.metrics(step, values)

    def event(self, level, text, step=None):
        for s in self.sinks:
            s.event(level, text, step)

    def checkpoint(self, step, path, metrics):
        for s in self.sinks:
            s.checkpoint(step, path, metrics)

    def checkpoint_removed(self, step, path):
        for s in self.sinks:
            s.checkpoint_removed(step, path)

    def finding(self, finding):
        for s in self.sinks:
            s.finding(finding)

    def should_stop(self):
        for s in self.sinks:
            reason = s.should_stop()
            if reason:
                return reason
        return None

    def close(self):
        for s in self.sinks:
            s.close()


class TextLogSink(Sink):
    """The run's story as plain lines, for run.log and `tunebench logs`: what is loading, the data
    figures, a progress line about every hundredth of the run, evaluations, checkpoints, warnings,
    the doctor's findings. The store has it all too; this is what a person reads with `tail -f`."""

    PROGRESS_LINES = 100  # per run, so a 100k-step run does not write 100k lines

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.total: int | None = None
        self._every = 1
        self._next_step = 0

    def _line(self, text: str) -> None:
        try:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)
        except (OSError, ValueError):
            pass  # a full disk or a closed log must not stop training: the store has the record

    def run_started(self, info):
        self.total = int(info["total_steps"]) if info.get("total_steps") else None
        self._every = max(1, (self.total or 0) // self.PROGRESS_LINES)
        start = int(info.get("start_step") or 0)
        self._next_step = start + self._every
        what = f"resumed at step {start}" if start else "started"
        figures = [f"{info[key]} {label}" for key, label in (
            ("method", "method"), ("device", "device"), ("precision", "precision"),
            ("train_samples", "training samples"), ("eval_samples", "validation samples"),
            ("total_steps", "steps")) if info.get(key) is not None]
        if info.get("trainable_params") and info.get("total_params"):
            share = 100 * info["trainable_params"] / info["total_params"]
            figures.append(f"{info['trainable_params']:,} of {info['total_params']:,} parameters trainable ({share:.3g} %)")
        self._line(f"{what}: " + ", ".join(figures))

    def _step(self, step: int) -> str:
        return f"step {step}/{self.total}" if self.total else f"step {step}"

    def metrics(self, step, values):
        if "eval_loss" in values:
            extra = f", perplexity {format_figure(values['eval_ppl'])}" if "eval_ppl" in values else ""
            if "eval_rewards/accuracies" in values:  # preference stages (TRL's metrics)
                extra += f", reward accuracy {format_figure(values['eval_rewards/accuracies'])}"
            self._line(f"{self._step(step)}: eval loss {format_figure(values['eval_loss'])}{extra}")
            return
        if "loss" not in values or (step < self._next_step and step != self.total):
            return
        self._next_step = step + self._every
        parts = [f"loss {format_figure(values['loss'])}"]
        parts += [f"{label} {format_figure(values[key])}" for key, label in (
            ("grad_norm", "grad norm"), ("lr", "lr"), ("tokens_per_s", "tokens/s"),
            ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "reward margin")) if key in values]
        self._line(f"{self._step(step)}: " + ", ".join(parts))

    def event(self, level, text, step=None):
        where = f"[step {step}] " if step is not None else ""
        self._line(f"{'' if level == 'info' else level + ': '}{where}{text}")

    def checkpoint(self, step, path, metrics):
        self._line(f"checkpoint at step {step}: {path}")

    def checkpoint_removed(self, step, path):
        self._line(f"removed checkpoint {step} (keep policy)")

    def finding(self, finding):
        advice = f" → {finding['advice']}" if finding.get("advice") else ""
        self._line(f"doctor {finding.get('severity', 'info')} ({finding.get('rule')}): {finding.get('title')}{advice}")


def format_figure(value: float) -> str:
    """A metric as a log shows it: four significant figures; NaN and inf by name."""
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)


def _json_value(value: float) -> float | str:
    # JSON has no NaN/Inf; keep them readable instead of crashing the writer.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlSink(Sink):
    """Appends every record to a JSONL file (the run's `metrics.jsonl`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict) -> None:
        record["time"] = time.time()
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def run_started(self, info):
        self._write({"type": "run_started", **info})

    def metrics(self, step, values):
        self._write({"type": "metrics", "step": step, **{k: _json_value(v) for k, v in values.items()}})

    def event(self, level, text, step=None):
        self._write({"type": "event", "level": level, "text": text, "step": step})

    def checkpoint(self, step, path, metrics):
        self._write({"type": "checkpoint", "step": step, "path": path, "metrics": {k: _json_value(v) for k, v in metrics.items()}})

    def checkpoint_removed(self, step, path):
        self._write({"type": "checkpoint_removed", "step": step, "path": path})

    def finding(self, finding):
        self._write({"type": "finding", **finding})

    def close(self):
        if not self._file.closed:
            self._file.close()
