"""The engine's sink into the run store.

Metrics are buffered and written in batches by a flusher thread at least every FLUSH_INTERVAL
(and at once before a checkpoint, an event, a finding or close), so a reader polling the store
sees a metric within about half a second and training never waits on SQLite for each value.
`should_stop()` is polled at every step: it reads the store's stop request at most every
STOP_POLL_INTERVAL and otherwise answers from memory.

DbSink implements engine.sink.Sink's interface without subclassing it: `jobs` imports `engine`
only inside function bodies (tests/test_jobs_sink.py checks the two stay in step).

The store mirrors what it records into the run folder (runs/<id>/history.jsonl, see jobs/store.py).
Should the store become unreadable mid-run (StoreError), the sink writes its records straight to that
file instead, so the folder keeps everything, and asks training to stop ("interrupt": a checkpoint,
then the worker records the run in run.json alone); `tunebench store rebuild` brings it all back.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from jobs.store import Store, StoreError, checkpoint_record, event_record, finding_key, metric_records

FLUSH_INTERVAL = 0.25
STOP_POLL_INTERVAL = 0.25
_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


def directory_size(path: str | os.PathLike) -> int | None:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return None
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # a file pruned while we walk
    return total


class DbSink:
    """Writes one run's metrics, events, checkpoints and findings to the store.

    `parent_pid`: the engine's pid. When the engine dies under the job (kill -9), the job notices
    that its parent changed and stops with "interrupt" (checkpoint first) instead of training on
    unsupervised.
    """

    def __init__(self, store: Store, run_id: str, *, parent_pid: int | None = None,
                 flush_interval: float = FLUSH_INTERVAL):
        self.store = store
        self.run_id = run_id
        self.parent_pid = parent_pid
        self.flush_interval = flush_interval
        self._buffer: list[tuple[int, str, float, float]] = []
        self._lock = threading.Lock()  # guards _buffer
        self._write_lock = threading.Lock()  # one batch written at a time, in order
        self._closed = threading.Event()
        self._interrupt = False
        self._stop_reason: str | None = None
        self._stop_checked = 0.0
        self.last_stop_reason: str | None = None  # what should_stop last answered, for the job's outcome
        # The last report of each finding sent (by rule and finding_key), for when the store cannot say.
        self._findings_sent: dict[tuple, dict] = {}
        self.lost: StoreError | None = None  # set when the store became unreadable: records go to the folder only
        self._flusher = threading.Thread(target=self._flush_loop, name=f"db-sink-{run_id}", daemon=True)
        self._flusher.start()

    # ----------------------------------------------------------------- buffering

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.flush_interval):
            try:
                self.flush()
            except Exception:  # a locked database must not kill the flusher: retry next tick
                pass

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return
            if self.lost is None:
                try:
                    self.store.add_metrics(self.run_id, rows)
                    return
                except StoreError as exc:
                    self._lose(exc)
                except Exception:
                    with self._lock:  # put them back, in order, for the next attempt
                        self._buffer[:0] = rows
                    raise
            self.store.journal(self.run_id, metric_records(rows))

    def _lose(self, exc: StoreError) -> None:
        if self.lost is None:
            self.lost = exc
            print(f"error: {exc}\nrun {self.run_id}: recording into its folder only, and stopping at the next "
                  "step boundary", flush=True)

    def _record(self, write, records: list[dict]) -> None:
        """`write` to the store; once it is lost, the records go to the run folder's history.jsonl."""
        if self.lost is None:
            try:
                write()
                return
            except StoreError as exc:
                self._lose(exc)
        self.store.journal(self.run_id, records)

    # ----------------------------------------------------------------- Sink interface

    def run_started(self, info: dict[str, Any]) -> None:
        total = info.get("total_steps")
        self._record(lambda: self.store.update_run(self.run_id, info=info, **({"total_steps": int(total)} if total else {})),
                     [{"type": "run_started", "info": info, "time": time.time()}])
        parts = [f"{key}={info[key]}" for key in ("total_steps", "method", "precision", "device", "train_samples")
                 if info.get(key) is not None]
        start = int(info.get("start_step") or 0)  # a resumed run starts at its checkpoint's step
        what = f"training resumed at step {start}" if start else "training started"
        self.event("info", what + (f": {', '.join(parts)}" if parts else ""), step=start)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        rows = []
        for name, value in values.items():
            try:
                rows.append((int(step), str(name), float(value), now))
            except (TypeError, ValueError):
                continue  # a non-numeric value is not a metric (e.g. a string the callback passed along)
        with self._lock:
            self._buffer.extend(rows)

    def event(self, level: str, text: str, step: int | None = None) -> None:
        self.flush()
        self._record(lambda: self.store.add_event(self.run_id, level, text, step),
                     [event_record(level, text, step, time.time())])

    def checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        self.flush()
        clean = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
        size = directory_size(path)
        self._record(lambda: self.store.add_checkpoint(self.run_id, step, str(path), clean, size),
                     [checkpoint_record(step, path, clean, size, time.time())])
        loss = clean.get("eval_loss", clean.get("loss"))
        detail = f" ({'eval_loss' if 'eval_loss' in clean else 'loss'} {loss:.4g})" if loss is not None and math.isfinite(loss) else ""
        text = f"checkpoint at step {step}{detail}"
        self._record(lambda: self.store.add_event(self.run_id, "info", text, step),
                     [event_record("info", text, step, time.time())])

    def checkpoint_removed(self, step: int, path: str) -> None:
        # The engine already removed the files (its keep policy); only the row goes.
        self._record(lambda: self.store.delete_checkpoint(self.run_id, step, remove_files=False),
                     [{"type": "checkpoint_removed", "step": int(step), "time": time.time()}])

    def finding(self, finding: dict[str, Any]) -> None:
        self.flush()
        key = (finding.get("rule"), finding_key(finding))
        # The store says whether it held this finding already (from an earlier attempt too).
        known = {"previous": self._findings_sent.get(key)}

        def write() -> None:
            known["previous"] = self.store.add_finding(self.run_id, finding)

        self._record(write, [{"type": "finding", "finding": finding, "time": time.time()}])
        previous = known["previous"]
        self._findings_sent[key] = finding
        if finding.get("rule") == "memory":
            # The measured CUDA peak beside the preflight estimate, where `tunebench doctor RUN` looks first.
            self._record(lambda: self.store.update_run(self.run_id, info={"memory": finding.get("evidence", {})}), [])
        severity = finding.get("severity", "info")
        if previous is not None and _SEVERITY_RANK.get(severity, 0) <= _SEVERITY_RANK.get(previous.get("severity"), 0):
            return  # the same finding with new figures, no worse: the store updated it; the events said it already
        level = {"error": "error", "warning": "warning"}.get(severity, "info")
        title = finding.get("title") or finding.get("rule", "finding")
        step = finding.get("step_end") or finding.get("step_start")
        self._record(lambda: self.store.add_event(self.run_id, level, f"doctor: {title}", step),
                     [event_record(level, f"doctor: {title}", step, time.time())])

    def interrupt(self) -> None:
        """Called from the job's SIGTERM handler: stop at the next step boundary with 'interrupt'."""
        self._interrupt = True

    def should_stop(self) -> str | None:
        reason = self._stop_reason_now()
        if reason:
            self.last_stop_reason = reason
        return reason

    def _stop_reason_now(self) -> str | None:
        if self._interrupt or self.lost is not None:
            return "interrupt"
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            return "interrupt"  # the engine died under us
        now = time.monotonic()
        if self._stop_reason is None and now - self._stop_checked >= STOP_POLL_INTERVAL:
            self._stop_checked = now
            try:
                self._stop_reason = self.store.stop_requested(self.run_id)
            except Exception:
                pass  # a busy database: ask again at a later step
        return self._stop_reason

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._flusher.join(timeout=5)
        self.flush()
