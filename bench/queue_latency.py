"""Queue latency: how fast a submitted job starts, and how fast a metric reaches a reader.

1. submit → first event: on an idle engine (a real detached engine subprocess, temporary
   workspace), time from calling jobs.control.submit to the run's `queued → running` event (the
   engine claimed it), and to the job process's own first event. Each submission waits a random
   0.3–1.2 s after the previous job ended, so the engine's idle polling is at a random phase.
2. metric → reader: a dry-run job's DbSink writes a `dry_run_tick` metric every 0.1 s whose value
   is the time it was handed to the sink; a separate reader process polls metrics_since every
   0.1 s (the TUI polls at least that often) and records arrival − value for each row.
Side by side: how long a metrics() call holds up the training loop, DbSink (buffered, written by
its flusher thread) vs. one store transaction per call.

    python bench/queue_latency.py [--samples 30] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.demo_data import write_demo_dataset  # noqa: E402  (pure Python)
from jobs import control  # noqa: E402
from jobs.db_sink import DbSink  # noqa: E402
from jobs.engine_process import engine_status, start_engine, stop_engine  # noqa: E402
from jobs.store import Store, open_store  # noqa: E402
from jobs.workspace import Workspace  # noqa: E402

READER = """
import json, sys, time
from jobs.store import Store
store, run_id, until = Store(sys.argv[1]), sys.argv[2], float(sys.argv[3])
seen, lags = 0, []
while time.time() < until:
    for row in store.metrics_since(run_id, after_id=seen, names=["dry_run_tick"]):
        seen = row.id
        lags.append(time.time() - row.value)
    time.sleep(0.1)
print(json.dumps(lags))
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def make_workspace(root: Path) -> Workspace:
    ws = Workspace(root).ensure()
    # Dry runs never load the model: an empty folder satisfies the submit-time path check.
    (ws.models_dir / "tiny").mkdir(parents=True)
    write_demo_dataset(ws.data_dir / "demo_capitals.json")
    return ws


def submit_latencies(ws: Workspace, samples: int) -> tuple[list[float], list[float]]:
    store = open_store(ws)
    to_running, to_job_event = [], []
    for _ in range(samples):
        time.sleep(random.uniform(0.3, 1.2))  # idle engine, random polling phase
        started = time.time()
        run = control.submit(ws, "demo", dry_run=True)
        deadline = time.monotonic() + 30
        while True:
            events = store.events_since(run.id)
            running = [e for e in events if e.text == "queued → running"]
            job = [e for e in events if e.text.startswith("training started")]
            if running and job:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"run {run.id} did not start within 30 s; see {ws.engine_log}")
            time.sleep(0.01)
        to_running.append(running[0].time - started)
        to_job_event.append(job[0].time - started)
        while store.get_run(run.id).state == "running":
            time.sleep(0.01)
    return to_running, to_job_event


def metric_lags(ws: Workspace, seconds: float) -> list[float]:
    store = open_store(ws)
    run = control.submit(ws, "demo", dry_run=True, dry_run_seconds=seconds)
    while store.get_run(run.id).state == "queued":
        time.sleep(0.01)
    reader = subprocess.run([sys.executable, "-c", READER, str(ws.store_db), run.id, str(time.time() + seconds + 1.5)],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(reader.stdout)


def sink_cost(root: Path, calls: int = 2000) -> tuple[float, float]:
    """Seconds per metrics() call: DbSink (batched) vs. one store transaction per call."""
    store = Store(root / "sink-bench.db")
    run = store.create_run("train", "bench", "kind: train\n")
    values = {"loss": 1.0, "grad_norm": 0.5, "lr": 1e-4, "epoch": 0.1, "tokens_per_s": 1000.0}
    sink = DbSink(store, run.id)
    started = time.perf_counter()
    for step in range(calls):
        sink.metrics(step, values)
    batched = (time.perf_counter() - started) / calls  # what the training loop waits; writes happen behind it
    sink.close()
    started = time.perf_counter()
    for step in range(calls):
        now = time.time()
        store.add_metrics(run.id, [(step, name, value, now) for name, value in values.items()])
    direct = (time.perf_counter() - started) / calls
    return batched, direct


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=30, help="submissions to time")
    parser.add_argument("--seconds", type=float, default=10, help="how long the metric-emitting job runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunebench-bench-") as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        start_engine(ws)
        try:
            to_running, to_job_event = submit_latencies(ws, args.samples)
            lags = metric_lags(ws, args.seconds)
            print(f"engine: {engine_status(ws).describe()}")
        finally:
            stop_engine(ws, timeout=60)
        batched, direct = sink_cost(Path(tmp))

    def line(name: str, values: list[float]) -> None:
        print(f"{name:<32} n={len(values):<4} median {statistics.median(values):.3f} s   "
              f"p95 {percentile(values, 95):.3f} s   max {max(values):.3f} s")

    line("submit → queued→running event", to_running)
    line("submit → job process's event", to_job_event)
    line("metric written → reader sees it", lags)
    print(f"training loop held per metrics() call: DbSink {batched * 1e6:.1f} µs, one transaction each "
          f"{direct * 1e6:.1f} µs (ratio {direct / batched:.0f}x)")
    print(f"submit_to_first_event_median = {statistics.median(to_running):.3f} s")
    print(f"metric_to_reader_median = {statistics.median(lags):.3f} s")
    print(f"submit_to_first_event_p95 = {percentile(to_running, 95):.3f} s")
    print(f"metric_to_reader_p95 = {percentile(lags, 95):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
