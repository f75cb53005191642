"""Fixed data for the TUI tests: a workspace whose store holds the same runs, metrics, events and
findings on every machine, and an app whose clock, engine line and GPU line are fixed too."""

from __future__ import annotations

import asyncio
import functools
import math

from textual.widgets import DataTable
from textual.worker import WorkerCancelled

from jobs.store import Store
from jobs.workspace import Workspace
from tui.app import TunebenchApp
from tui.backend import Backend, EngineInfo, GpuInfo
from tui.config import TuiConfig

FIXED_NOW = 1_763_900_000.0
GIB = 2**30


def _run(store: Store, run_id: str, name: str, *, kind: str = "train", state: str = "queued",
         started_ago: float | None = None, took: float | None = None, priority: int = 0, **fields):
    store.create_run(kind, name, f"name: {name}\n", priority=priority, run_id=run_id)
    path = {"running": ["running"], "completed": ["running", "completed"], "failed": ["running", "failed"],
            "cancelled": ["running", "cancelled"], "interrupted": ["running", "interrupted"]}.get(state, [])
    for step in path:
        extra = {k: fields.pop(k) for k in ("error", "advice") if k in fields and step == path[-1]}
        store.set_state(run_id, step, **extra)
    times = {"active_seconds": took or 0.0}  # the transitions above ran on the real clock: fix their time
    if started_ago is not None:
        times["started_at"] = FIXED_NOW - started_ago
        if took is not None:
            times["finished_at"] = FIXED_NOW - started_ago + took
    info = fields.pop("info", None)
    store.update_run(run_id, **times, **fields, **({"info": info} if info else {}))


def training_metrics(run_id: str, store: Store, *, last_step: int, every: int = 5, eval_every: int = 25,
                     start_time: float = FIXED_NOW - 600, cuda: bool = True) -> None:
    rows = []
    for step in range(every, last_step + 1, every):
        t = start_time + step * 2.0
        loss = 2.5 * math.exp(-step / 60) + 0.35 + 0.05 * math.sin(step / 3)
        rows += [(step, "loss", loss, t), (step, "grad_norm", 1.5 * math.exp(-step / 90) + 0.2, t),
                 (step, "lr", 5e-3 * min(1.0, step / 15) * (0.5 + 0.5 * math.cos(math.pi * step / 300)), t),
                 (step, "tokens_per_s", 1800 + 40 * math.sin(step / 7), t), (step, "tokens_seen", step * 512.0, t),
                 (step, "epoch", step / 7.0, t)]
        if cuda:
            rows += [(step, "mem_allocated", 3.1 * GIB, t), (step, "mem_peak_allocated", 3.6 * GIB, t),
                     (step, "mem_peak_reserved", 4.2 * GIB, t), (step, "gpu_mem_used", 5.0 * GIB, t),
                     (step, "gpu_mem_total", 24.0 * GIB, t)]
        if step % eval_every == 0:
            rows.append((step, "eval_loss", 2.6 * math.exp(-step / 70) + 0.45, t))
    store.add_metrics(run_id, rows)


def fill_store(workspace: Workspace) -> Store:
    """Six runs in every state; `demo` is running with metrics, a log and a finding."""
    store = Store(workspace.store_db)
    info = {"trainable_params": 98_304, "total_params": 1_180_000, "method": "lora", "precision": "fp32",
            "device": "cuda"}
    _run(store, "r-fixed-0001", "demo-diverge", state="failed", started_ago=3000, took=95,
         error="loss is NaN at step 40", advice="lower training.lr (0.5 is far too high for LoRA)", step=40,
         total_steps=210)
    _run(store, "r-fixed-0002", "eval-demo", kind="eval", state="completed", started_ago=2500, took=42)
    _run(store, "r-fixed-0003", "sweep-lr-3", state="cancelled", started_ago=2000, took=300, step=75, total_steps=210)
    _run(store, "r-fixed-0004", "qlora-night", state="interrupted", started_ago=1500, took=600, step=150,
         total_steps=400, error="the engine stopped", advice="resume continues from step 150")
    _run(store, "r-fixed-0005", "demo", state="running", started_ago=600, total_steps=300, info=info, gpu="0")
    training_metrics("r-fixed-0005", store, last_step=120)
    store.add_finding("r-fixed-0005", {"rule": "plateau", "severity": "warning", "title": "eval loss flat for 3 evaluations",
                                       "advice": "lower the learning rate or stop early", "step_start": 50,
                                       "step_end": 100, "evidence": {}, "stop": False})
    _run(store, "r-fixed-0006", "qlora-big", state="queued")
    _run(store, "r-fixed-0007", "merge-demo", kind="merge", state="queued", priority=2)
    run_dir = workspace.run_dir("r-fixed-0005")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.log").write_text("".join(f"step {s}: loss {2.5 * math.exp(-s / 60) + 0.35:.4f}\n"
                                             for s in range(5, 121, 5)))
    return store


def async_test(test):
    """Run an `async def` test on a fresh event loop (no pytest async plugin needed)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


async def settle(pilot, rounds: int = 3) -> None:
    """Let messages, workers and the messages they post run to the end, and tables lay out."""
    for _ in range(rounds):
        await pilot.pause()
        await _workers_ended(pilot.app)
    await pilot.pause()
    for _ in range(100):
        if not _tables_pending_layout(pilot.app):
            return
        await pilot.pause()
    raise AssertionError("a DataTable never laid out its new rows and cells")


async def _workers_ended(app) -> None:
    """Every worker to its end. A worker cancelled meanwhile has ended too: Textual cancels a screen's
    workers when the screen closes (a run that completes opens another screen in its place)."""
    for worker in list(app.workers):
        try:
            await worker.wait()
        except WorkerCancelled:
            pass


def _tables_pending_layout(app) -> bool:
    # A DataTable measures new rows and widened cells on its next Idle event, which may come after
    # every queue was empty once: a snapshot taken before then shows columns at their label widths.
    return any(table._require_update_dimensions or table._updated_cells
               for table in app.screen.query(DataTable))


async def until(pilot, condition, what: str, attempts: int = 200) -> None:
    """Bounded wait for a condition that a worker or a timer will make true."""
    for _ in range(attempts):
        if condition():
            return
        await settle(pilot, 1)
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def screen_text(app) -> str:
    """The current screen as plain text (what a user reads)."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=app.size.width, color_system=None, legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.file.getvalue()


def make_app(workspace: Workspace, *, engine_running: bool = True, gpus: bool = True, **config) -> TunebenchApp:
    engine = EngineInfo(True, 4242, "r-fixed-0005", 2) if engine_running else EngineInfo(False, queue_length=2)
    gpu_list = [GpuInfo(0, "NVIDIA L4", 5 * GIB, 24 * GIB)] if gpus else []
    backend = Backend(workspace, clock=lambda: FIXED_NOW, engine_probe=lambda: engine, gpu_probe=lambda: gpu_list,
                      autostart_engine=False)
    # Long intervals: tests poll on purpose (app.refresh_now(), screen.poll()) so every frame is the same.
    settings = dict(poll_interval=60.0, status_interval=60.0, cursor_blink=False, theme="textual-dark")
    settings.update(config)
    return TunebenchApp(TuiConfig(workspace=workspace, **settings), backend)
