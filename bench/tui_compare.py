"""How long Compare takes to open on long runs: the real app, headless, 6 runs marked on Runs.

Each run holds `--rows` rows of the metric drawn (loss, one a step), plus its tokens counter every
10 steps and an eval_loss every 100 (so a run is a little over `--rows` metric rows). The user
marks the 6 runs with space and presses C; the time is taken from the key press to the first paint
of the plot with the runs' lines in it (MetricPlot.render, timed here). The Compare screen is
opened `--repeat` times (escape, C again); then the next metric (m) and the tokens axis (a) are
timed the same way.

    python bench/tui_compare.py [--rows 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs.store import Store  # noqa: E402
from jobs.workspace import Workspace  # noqa: E402
from tui.app import TunebenchApp  # noqa: E402
from tui.backend import Backend, EngineInfo, GpuInfo  # noqa: E402
from tui.config import TuiConfig  # noqa: E402
from tui.screens.compare import CompareScreen  # noqa: E402
from tui.screens.runs import RunsScreen  # noqa: E402
from tui.widgets.plot import MetricPlot  # noqa: E402

RUNS = 6
GIB = 2**30
PRESET = "name: {name}\nmethod:\n  name: lora\n  lora:\n    r: {r}\ntraining:\n  lr: {lr}\n"


def make_workspace(root: Path, rows: int) -> Workspace:
    workspace = Workspace(root).ensure()
    store = Store(workspace.store_db)
    start = time.time() - rows
    for index in range(RUNS):
        run_id = f"r-bench-{index}"
        store.create_run("train", f"sweep-{index}", PRESET.format(name=f"sweep-{index}", r=8 * (index + 1),
                                                                     lr=1e-4 * (index + 1)), run_id=run_id)
        store.set_state(run_id, "running")
        store.set_state(run_id, "completed")
        batch = []
        for step in range(1, rows + 1):
            t = start + step
            batch.append((step, "loss", (2.5 + index / 5) * math.exp(-step / (rows / 4)) + 0.3 + 0.05 * math.sin(step), t))
            if step % 10 == 0:
                batch.append((step, "tokens_seen", step * 512.0 * (1 + index / 10), t))
            if step % 100 == 0:
                batch.append((step, "eval_loss", 2.6 * math.exp(-step / (rows / 3)) + 0.4 + index / 20, t))
            if len(batch) >= 20_000:
                store.add_metrics(run_id, batch)
                batch = []
        store.add_metrics(run_id, batch)
    store.close()
    return workspace


class Paints:
    """When the Compare plot was last painted with lines in it (perf_counter)."""

    def __init__(self) -> None:
        self.last: float | None = None
        original = MetricPlot.render

        def render(plot):
            result = original(plot)
            if plot.id == "compare-plot" and plot.lines:
                self.last = time.perf_counter()
            return result

        MetricPlot.render = render


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit("timed out waiting for the Compare screen")
        await pilot.pause(0.001)


async def timed(pilot, paints: Paints, key: str, done, cpu: list | None = None) -> float:
    """Seconds from pressing `key` to the plot's next paint once `done()` holds; `cpu` gets the
    process's CPU seconds over the same span (what a shared, busy machine does not inflate)."""
    paints.last = None
    started, cpu_started = time.perf_counter(), time.process_time()
    await pilot.press(key)
    await wait_for(pilot, lambda: done() and paints.last is not None and paints.last > started)
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    return paints.last - started


async def session(app: TunebenchApp, repeat: int) -> dict:
    paints = Paints()
    figures: dict = {"open": [], "cpu": []}
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.overview is not None)
        await pilot.pause()
        await pilot.press(*["space"] * RUNS)
        await pilot.pause()
        assert len(app.screen.marked) == RUNS, app.screen.marked
        for _ in range(repeat):
            seconds = await timed(pilot, paints, "C", lambda: isinstance(app.screen, CompareScreen) and app.screen.loads >= 1,
                                  figures["cpu"])
            figures["open"].append(seconds)
            screen = app.screen
            figures["points"] = sum(len(line.xs) for line in screen.loaded.lines)
            figures["rows"] = sum(line.rows for line in screen.loaded.lines)
            await pilot.press("escape")
            await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        await timed(pilot, paints, "C", lambda: isinstance(app.screen, CompareScreen) and app.screen.loads >= 1)
        screen = app.screen
        figures["metric"] = await timed(pilot, paints, "m", lambda: screen.loads >= 2)
        figures["align"] = await timed(pilot, paints, "a", lambda: screen.loads >= 3)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the drawn metric per run")
    parser.add_argument("--repeat", type=int, default=5, help="how many times Compare is opened")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        made = time.perf_counter()
        workspace = make_workspace(Path(tmp) / "ws", args.rows)
        print(f"compare: {RUNS} runs of {args.rows:,} loss rows each (+ tokens and eval rows), "
              f"written in {time.perf_counter() - made:.1f} s; 160x48", flush=True)
        engine = EngineInfo(True, 4242, None, 0)
        gpus = [GpuInfo(0, "NVIDIA L4", 5 * GIB, 24 * GIB)]
        backend = Backend(workspace, engine_probe=lambda: engine, gpu_probe=lambda: gpus, autostart_engine=False)
        app = TunebenchApp(TuiConfig(workspace=workspace, cursor_blink=False, poll_interval=60.0,
                                     status_interval=60.0), backend)
        figures = asyncio.run(session(app, args.repeat))
    opens = figures["open"]
    print(f"opened {len(opens)} times: " + ", ".join(f"{s:.3f}" for s in opens) + " s; "
          f"{figures['rows']:,} rows read, {figures['points']:,} points drawn")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU time of the process per open: median {statistics.median(figures['cpu']):.3f} s; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs (wall times stretch on a busy machine)")
    print(f"compare_metric_switch_s = {figures['metric']:.3f} s")
    print(f"compare_align_tokens_s = {figures['align']:.3f} s")
    print(f"compare_open_s_worst = {max(opens):.3f} s")
    print(f"compare_open_s = {statistics.median(opens):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
