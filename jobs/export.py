"""A run's outcome and metrics for scripts: `tunebench wait` and `tunebench metrics`, and the
dashboard's export key. Plain functions over the run store; no torch, no Textual.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Callable

from jobs.store import ACTIVE_STATES, Run, RunNotFound, Store

# `tunebench wait`'s exit codes: 0 and 2 mean what they mean for every verb (README, "Exit codes").
WAIT_CODES = {"completed": 0, "failed": 1, "interrupted": 3, "cancelled": 5}
WAIT_TIMEOUT_CODE = 6
WAIT_CODES_HELP = ("exit codes: 0 completed, 1 failed, 3 interrupted (resumable: tunebench resume RUN), "
                   "5 cancelled, 6 still queued or running when --timeout passed, 2 an error (unknown run)")
# The columns a reader looks for first; every other metric follows in name order.
FIRST_COLUMNS = ("loss", "eval_loss", "grad_norm", "lr", "epoch")
EXPORT_DIR = "exports"


def wait_for_run(store: Store, run_id: str, *, timeout: float | None = None, poll: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[Run], None] | None = None) -> Run:
    """The run once it has ended, or as it is when `timeout` seconds have passed. `on_change` is
    told of each state or step it sees move. RunNotFound when the run is deleted meanwhile."""
    deadline = None if timeout is None else clock() + timeout
    seen: tuple | None = None
    while True:
        run = store.get_run(run_id)
        if run is None:
            raise RunNotFound(f"run {run_id} was deleted while waiting for it")
        if on_change is not None and (run.state, run.step) != seen:
            seen = (run.state, run.step)
            on_change(run)
        if run.state not in ACTIVE_STATES or (deadline is not None and clock() >= deadline):
            return run
        sleep(poll if deadline is None else max(0.0, min(poll, deadline - clock())))


def wait_code(run: Run) -> int:
    return WAIT_CODES.get(run.state, WAIT_TIMEOUT_CODE)


def metrics_table(store: Store, run_id: str) -> tuple[list[str], list[dict]]:
    """Every metric of a run, one row per step: (columns, rows). A row holds `step`, `time` (the
    last time a value was logged at that step) and each metric logged at that step (its last value)."""
    by_step: dict[int, dict] = {}
    names: set[str] = set()
    for row in store.metrics_since(run_id):
        record = by_step.setdefault(row.step, {"step": row.step})
        record[row.name] = row.value
        record["time"] = max(record.get("time", row.time), row.time)
        names.add(row.name)
    ordered = [n for n in FIRST_COLUMNS if n in names] + sorted(names - set(FIRST_COLUMNS))
    return ["step", "time", *ordered], [by_step[s] for s in sorted(by_step)]


def _number_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # nan, inf: what went wrong is worth keeping
    return repr(value) if isinstance(value, float) else str(value)


def metrics_csv(store: Store, run_id: str) -> str:
    columns, rows = metrics_table(store, run_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_number_text(row.get(c)) for c in columns])
    return out.getvalue()


def metrics_json(store: Store, run: Run) -> dict:
    """{"run": {id, name, state}, "columns": [...], "rows": [{step, time, <metric>: value}]};
    NaN and infinities as the strings "nan", "inf", "-inf" (JSON has none), as metrics.jsonl writes them."""
    columns, rows = metrics_table(store, run.id)
    clean = [{k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
             for row in rows]
    return {"run": {"id": run.id, "name": run.name, "state": run.state}, "columns": columns, "rows": clean}


def export_dir(workspace, run_id: str) -> Path:
    folder = workspace.run_dir(run_id) / EXPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_metrics_csv(store: Store, workspace, run_id: str, stem: str) -> Path:
    """runs/<id>/exports/<stem>.csv, written whole (a reader never sees half a file)."""
    path = export_dir(workspace, run_id) / f"{stem}.csv"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(metrics_csv(store, run_id), encoding="utf-8")
    tmp.replace(path)
    return path
