"""An hours-long TUI session in minutes: the real app, headless, on a run that writes metrics live.

The app watches a running run's dashboard (its history already at the plots' point cap) (the Runs screen under it) while the run's metrics grow
one step per poll, for `--polls` polls driven as fast as the app takes them. CPU time per poll in the
last 300 polls over the first 300 says whether a session slows down as it goes (each poll should cost
the same at the end as at the start). Then the run finishes, the user goes back to Runs, and the app
is left alone on its own timers (poll 0.4 s, status 2 s) to measure the CPU an idle TUI takes; last,
keys are pressed on the Runs table, each timed from the press to the redrawn screen.

    python bench/tui_soak.py [--polls 3000] [--idle 10]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from textual.pilot import WaitForScreenTimeout  # noqa: E402
from textual.widgets import Footer  # noqa: E402

from jobs.store import Store  # noqa: E402
from jobs.workspace import Workspace  # noqa: E402
from tui.app import TunebenchApp  # noqa: E402
from tui.backend import Backend, EngineInfo, GpuInfo  # noqa: E402
from tui.config import TuiConfig  # noqa: E402
from tui.screens.dashboard import DashboardScreen  # noqa: E402

RUN = "r-soak"
GIB = 2**30
WINDOW = 300
# Steps the run has made before the session starts: enough that every plot is at its point cap
# (TuiConfig.plot_points) from the first poll, so growth over the session is the session's alone.
HISTORY = 2000


def metric_rows(step: int, now: float) -> list[tuple]:
    loss = 2.5 * math.exp(-step / 600) + 0.35 + 0.05 * math.sin(step / 3)
    rows = [(step, "loss", loss, now), (step, "grad_norm", 1.0 + 0.2 * math.sin(step / 5), now),
            (step, "lr", 2e-4, now), (step, "tokens_per_s", 1800.0, now), (step, "tokens_seen", step * 512.0, now),
            (step, "epoch", step / 500, now), (step, "mem_allocated", 3.1 * GIB, now),
            (step, "mem_peak_allocated", 3.6 * GIB, now), (step, "gpu_mem_used", 5.0 * GIB, now),
            (step, "gpu_mem_total", 24.0 * GIB, now)]
    if step % 25 == 0:
        rows.append((step, "eval_loss", loss + 0.1, now))
    return rows


def make_workspace(root: Path, history: int, total_steps: int) -> tuple[Workspace, Store]:
    workspace = Workspace(root)
    workspace.ensure()
    store = Store(workspace.store_db)
    for index, state in enumerate(("completed", "failed", "cancelled", "queued")):
        run_id = f"r-other-{index}"
        store.create_run("train", f"other-{index}", "name: other\n", run_id=run_id)
        if state != "queued":
            store.set_state(run_id, "running")
            store.set_state(run_id, state)
    store.create_run("train", "soak", "name: soak\n", run_id=RUN)
    store.set_state(RUN, "running")
    store.update_run(RUN, total_steps=total_steps, step=history)
    start = time.time() - history
    store.add_metrics(RUN, [row for step in range(1, history + 1) for row in metric_rows(step, start + step)])
    workspace.run_dir(RUN).mkdir(parents=True, exist_ok=True)
    return workspace, store


def footer_watchers(app) -> int:
    footer = app.screen.query_one(Footer)
    return sum(len(watchers) for watchers in getattr(footer, "__watchers", {}).values())


async def settle(pilot) -> bool:
    """Wait until the poll's work is drawn; False when the app stalled past Textual's 30 s wait."""
    try:
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    except WaitForScreenTimeout:
        return False
    return True


async def session(app: TunebenchApp, store: Store, workspace: Workspace, polls: int, idle_seconds: float) -> dict:
    figures: dict = {}
    log = workspace.run_dir(RUN) / "run.log"
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        app.open_run(RUN)
        while not (isinstance(app.screen, DashboardScreen) and getattr(app.screen, "feed", None)
                   and app.screen.feed.reads >= 1):
            await settle(pilot)
        dashboard = app.screen
        costs, stalls = [], 0
        for poll in range(1, polls + 1):
            step = HISTORY + poll
            store.add_metrics(RUN, metric_rows(step, time.time()))
            store.update_run(RUN, step=step)
            with log.open("a") as handle:
                handle.write(f"step {step}: loss {metric_rows(step, 0)[0][2]:.4f}\n")
            started = time.process_time()
            app.poll_overview()  # what the app's 0.4 s timer does
            dashboard.poll()  # what the dashboard's own timer does
            stalls += not await settle(pilot)
            costs.append(time.process_time() - started)
            if poll % 500 == 0:
                print(f"  poll {poll}: {statistics.mean(costs[-WINDOW:]) * 1000:.1f} ms CPU per poll "
                      f"(last {WINDOW}), {footer_watchers(app)} footer watchers, {stalls} stalls", flush=True)
        figures["stalls"] = stalls
        figures["first_ms"] = statistics.mean(costs[:WINDOW]) * 1000
        figures["last_ms"] = statistics.mean(costs[-WINDOW:]) * 1000
        figures["watchers"] = footer_watchers(app)

        store.set_state(RUN, "completed")
        await pilot.press("escape")
        await settle(pilot)
        await asyncio.sleep(1.0)  # let the finish land on the screens before idling
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.sleep(idle_seconds)  # the app's own poll timers run meanwhile
        figures["idle_share"] = (time.process_time() - cpu) / (time.perf_counter() - wall) * 100

        latencies = []
        for key in ["down"] * 3 + ["up"] * 3 + ["down", "up"] * 27:
            started = time.perf_counter()
            await pilot.press(key)
            await pilot.pause()
            latencies.append((time.perf_counter() - started) * 1000)
        figures["key_p95"] = statistics.quantiles(latencies, n=20)[-1]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=3000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle measurement")
    args = parser.parse_args()
    if args.polls < 2 * WINDOW:
        parser.error(f"--polls must be at least {2 * WINDOW}")
    with tempfile.TemporaryDirectory() as tmp:
        workspace, store = make_workspace(Path(tmp) / "ws", HISTORY, total_steps=HISTORY + args.polls + 100)
        engine = EngineInfo(True, 4242, RUN, 1)
        gpus = [GpuInfo(0, "NVIDIA L4", 5 * GIB, 24 * GIB)]
        backend = Backend(workspace, engine_probe=lambda: engine, gpu_probe=lambda: gpus, autostart_engine=False)
        app = TunebenchApp(TuiConfig(workspace=workspace, cursor_blink=False), backend)
        print(f"soak: {args.polls} polls on a live run's dashboard, 160x48, then {args.idle:.0f} s idle on Runs")
        figures = asyncio.run(session(app, store, workspace, args.polls, args.idle))
    print(f"CPU per poll: first {WINDOW} {figures['first_ms']:.2f} ms, last {WINDOW} {figures['last_ms']:.2f} ms; "
          f"footer watchers at the end: {figures['watchers']}; polls stalled over 30 s: {figures['stalls']}")
    print(f"tui_poll_cpu_ratio_end_vs_start = {figures['last_ms'] / figures['first_ms']:.2f} x")
    print(f"tui_idle_cpu_share = {figures['idle_share']:.1f} %")
    print(f"tui_key_latency_p95 = {figures['key_p95']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
