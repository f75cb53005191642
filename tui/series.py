"""A run's metric series as the dashboard holds them: every point kept, a bounded set drawn.

The store keeps every row; the dashboard reads only rows newer than the last it has seen and
appends them here. Drawing 100 000 points on a 60-column plot is wasted work, so each series keeps a
min/max pyramid: at most `max_points` points, each bucket contributing its lowest and highest value
(so a spike never disappears from the plot). Appending is O(1) amortised; nothing is recomputed from
the start when a row arrives. Pure Python, no Textual: the dashboard's worker thread owns these.
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass


class MinMaxBuckets:
    """Consecutive buckets of `width` points, each remembering its lowest and highest point."""

    def __init__(self, max_points: int):
        self.max_buckets = max(2, max_points // 2)
        self.width = 1
        # Each bucket: [x_of_min, min, x_of_max, max, count]
        self.buckets: list[list[float]] = []

    def add(self, x: float, y: float) -> None:
        last = self.buckets[-1] if self.buckets else None
        if last is not None and last[4] < self.width:
            if y < last[1]:
                last[0], last[1] = x, y
            if y >= last[3]:  # ties move forward, so a flat stretch still reaches its last step
                last[2], last[3] = x, y
            last[4] += 1
            return
        self.buckets.append([x, y, x, y, 1])
        if len(self.buckets) > self.max_buckets:
            self._halve()

    def _halve(self) -> None:
        merged = []
        for i in range(0, len(self.buckets), 2):
            pair = self.buckets[i : i + 2]
            if len(pair) == 1:
                merged.append(pair[0])
                continue
            a, b = pair
            low = a if a[1] <= b[1] else b
            high = a if a[3] > b[3] else b
            merged.append([low[0], low[1], high[2], high[3], a[4] + b[4]])
        self.buckets = merged
        self.width *= 2

    def points(self) -> tuple[list[float], list[float]]:
        xs: list[float] = []
        ys: list[float] = []
        for x_min, y_min, x_max, y_max, _ in self.buckets:
            if x_min == x_max:
                xs.append(x_min)
                ys.append(y_min)
            elif x_min < x_max:
                xs += (x_min, x_max)
                ys += (y_min, y_max)
            else:
                xs += (x_max, x_min)
                ys += (y_max, y_min)
        return xs, ys


class Series:
    """One metric of one run: the full data, a drawable view, and a smoothed drawable view."""

    def __init__(self, max_points: int = 600, smoothing: float = 0.9):
        self.steps = array("d")
        self.values = array("d")
        self.times = array("d")
        self._raw = MinMaxBuckets(max_points)
        self._smooth = MinMaxBuckets(max_points)
        self._weight = smoothing
        self._ema = 0.0
        self._ema_n = 0

    def append(self, step: float, value: float, time: float = 0.0) -> None:
        self.steps.append(step)
        self.values.append(value)
        self.times.append(time)
        if not math.isfinite(value):
            return  # NaN/Inf are kept (the key figures and the doctor show them) but cannot be drawn
        self._raw.add(step, value)
        # TensorBoard's debiased exponential moving average: early points are not dragged to 0.
        self._ema = self._ema * self._weight + (1 - self._weight) * value
        self._ema_n += 1
        self._smooth.add(step, self._ema / (1 - self._weight**self._ema_n))

    def __len__(self) -> int:
        return len(self.values)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None

    @property
    def last_step(self) -> float | None:
        return self.steps[-1] if self.steps else None

    def points(self, smoothed: bool = False) -> tuple[list[float], list[float]]:
        return (self._smooth if smoothed else self._raw).points()

    def minimum(self) -> tuple[float, float] | None:
        """(step, value) of the lowest finite value."""
        best = None
        for step, value in zip(self.steps, self.values):
            if math.isfinite(value) and (best is None or value < best[1]):
                best = (step, value)
        return best

    def maximum(self) -> float | None:
        finite = [v for v in self.values if math.isfinite(v)]
        return max(finite) if finite else None


@dataclass
class Pace:
    steps_per_s: float
    seconds_left: float | None


def recent_pace(series: Series, total_steps: int | None, window: int = 20, since: float | None = None) -> Pace | None:
    """Steps per second over the last `window` reports (the pace now, not since the start).

    `since`: the current attempt's start. Reports from before it are left out, so the time a resumed
    run sat cancelled and queued does not pass for slow training."""
    n = len(series)
    if n < 2:
        return None
    first = max(0, n - 1 - window)
    if since is not None:
        first = max(first, bisect.bisect_left(series.times, since))
        if first >= n - 1:
            return None
    d_step = series.steps[-1] - series.steps[first]
    d_time = series.times[-1] - series.times[first]
    if d_step <= 0 or d_time <= 0:
        return None
    rate = d_step / d_time
    left = None
    if total_steps:
        left = max(0.0, (total_steps - series.steps[-1]) / rate)
    return Pace(rate, left)


class SeriesSet:
    """All metrics of one run, fed with store rows in id order."""

    def __init__(self, max_points: int = 600, smoothing: float = 0.9):
        self.max_points = max_points
        self.smoothing = smoothing
        self.series: dict[str, Series] = {}
        self.last_id = 0

    def add_rows(self, rows) -> int:
        """Append MetricRow-like rows (id, step, name, value, time); returns how many were new."""
        added = 0
        for row in rows:
            if row.id <= self.last_id:
                continue  # a re-read after a slow poll: never count a row twice
            series = self.series.get(row.name)
            if series is None:
                series = self.series[row.name] = Series(self.max_points, self.smoothing)
            value = float(row.value) if row.value is not None else math.nan
            series.append(float(row.step), value, float(row.time or 0.0))
            self.last_id = row.id
            added += 1
        return added

    def get(self, name: str) -> Series | None:
        return self.series.get(name)

    def last(self, name: str) -> float | None:
        series = self.series.get(name)
        return series.last if series else None

    def points(self, name: str, smoothed: bool = False) -> tuple[list[float], list[float]]:
        series = self.series.get(name)
        return series.points(smoothed) if series else ([], [])
