"""Time to the TUI's first painted frame, against the import time of torch, in one run.

The TUI is started for real in a tmux pane (private socket, 120x40) on a fresh workspace, and the
pane is polled until the Runs screen's top line is on the terminal: that is what a user waits for.
Without tmux the app runs headless and the first frame is when its auto-pilot starts (after the
first screen is mounted and drawn). Each sample is a fresh interpreter, so imports are paid in full.

    python bench/tui_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_FRAME_MARK = "tunebench › Runs"


# The floor: a Textual app with one line of text and a footer, started the same way.
BARE_TEXTUAL = (
    "from textual.app import App\n"
    "from textual.widgets import Footer, Static\n"
    "class Bare(App):\n"
    "    def compose(self):\n"
    f"        yield Static({FIRST_FRAME_MARK!r})\n"
    "        yield Footer()\n"
    "Bare().run()\n"
)


def first_paint_tmux(workspace: Path | None, timeout: float = 60.0) -> float:
    """Launch to first frame of tunebench on `workspace`, or of the bare Textual app when None."""
    socket = f"tunebench-bench-{uuid.uuid4().hex[:8]}"
    if workspace is None:
        script = Path(tempfile.gettempdir()) / f"bare-textual-{os.getpid()}.py"
        script.write_text(BARE_TEXTUAL)
        command = f"{sys.executable} {script}"
    else:
        tunebench = Path(sys.executable).with_name("tunebench")
        command = f"TUNEBENCH_START_ENGINE=0 {tunebench} --workspace {workspace}"
    started = time.perf_counter()
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "120", "-y", "40",
                    command], check=True)
    try:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            screen = subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-t", "main"], capture_output=True,
                                    text=True).stdout
            if FIRST_FRAME_MARK in screen:
                return time.perf_counter() - started
            time.sleep(0.005)  # the sampling resolution of the measurement
        raise RuntimeError(f"no frame within {timeout}s; the pane shows:\n{screen}")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


HEADLESS = """
import sys, time
started = float(sys.argv[1])
from tui.app import TunebenchApp
from tui.config import TuiConfig
from jobs.workspace import Workspace

async def first_frame(pilot):
    print(time.time() - started)
    pilot.app.exit()

app = TunebenchApp(TuiConfig(workspace=Workspace(__import__("pathlib").Path(sys.argv[2])), start_engine=False))
app.run(headless=True, auto_pilot=first_frame, size=(120, 40))
"""


def first_paint_headless(workspace: Path) -> float:
    result = subprocess.run([sys.executable, "-c", HEADLESS, repr(time.time()), str(workspace)], cwd=REPO,
                            capture_output=True, text=True, timeout=120, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def metric_to_screen(workspace: Path, samples: int = 10, timeout: float = 30.0) -> list[float]:
    """Seconds from a metric row written to the store to its value on the dashboard (tmux only)."""
    from jobs.store import Store

    store = Store(workspace / "tunebench.db")
    store.create_run("train", "latency", "name: latency\n", run_id="r-latency")
    store.set_state("r-latency", "running")
    store.update_run("r-latency", total_steps=1000)
    socket = f"tunebench-bench-{uuid.uuid4().hex[:8]}"
    launch = (f"TUNEBENCH_START_ENGINE=0 {sys.executable} -c "
              f"'from tui.app import run_app; run_app(\"{workspace}\", open_run=\"r-latency\")'")
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", "120", "-y", "40",
                    launch], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "-L", socket, "capture-pane", "-p", "-t", "main"], capture_output=True,
                              text=True).stdout

    latencies = []
    try:
        deadline = time.perf_counter() + timeout
        while "Run latency" not in screen() and time.perf_counter() < deadline:
            time.sleep(0.01)
        for step in range(1, samples + 1):
            value = 1.0 + step / 1000 + 0.00007  # a value that reads differently at every step
            written = time.perf_counter()
            store.add_metrics("r-latency", [(step, "loss", value, time.time())])
            expected = f"train {value:.4f}"
            while expected not in screen():
                if time.perf_counter() - written > timeout:
                    raise RuntimeError(f"{expected!r} never reached the screen")
                time.sleep(0.005)
            latencies.append(time.perf_counter() - written)
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)
    return latencies


def import_time(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    use_tmux = shutil.which("tmux") is not None
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        measure = (lambda: first_paint_tmux(workspace)) if use_tmux else (lambda: first_paint_headless(workspace))
        measure()  # warm the OS file cache once, as a second start of the day would be
        paints = [measure() for _ in range(args.runs)]
        bare = [first_paint_tmux(None) for _ in range(args.runs)] if use_tmux else []
        latencies = metric_to_screen(Path(tmp) / "latency-ws") if use_tmux else []
    tui_imports = [import_time("tui.app") for _ in range(3)]
    torch_imports = [import_time("torch") for _ in range(3)]
    method = "tmux pane, 120x40" if use_tmux else "headless auto-pilot"
    print(f"first painted frame ({method}), {args.runs} runs: " + ", ".join(f"{p:.3f}" for p in paints) + " s")
    if bare:
        print(f"bare Textual app (Static + Footer), same launch: median {statistics.median(bare):.3f} s")
    print(f"import tui.app: median {statistics.median(tui_imports):.3f} s")
    print(f"import torch:   median {statistics.median(torch_imports):.3f} s ({', '.join(f'{t:.2f}' for t in torch_imports)})")
    paint = statistics.median(paints)
    torch_time = statistics.median(torch_imports)
    print(f"torch import / TUI first paint = {torch_time / paint:.1f}x")
    if latencies:
        print(f"metric written → on the dashboard, {len(latencies)} samples: median "
              f"{statistics.median(latencies):.3f} s, max {max(latencies):.3f} s (poll interval 0.4 s)")
    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"tui_first_paint_median = {paint:.3f} s")
    print(f"torch_import = {torch_time:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
