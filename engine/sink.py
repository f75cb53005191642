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
from typing import Any, Literal

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
