"""What probes cost per checkpoint save on the demo: the demo preset (tiny model, LoRA, 210 steps,
a save every 50 steps, at each new best eval loss and at the end) trained through engine.train
with three probes and without, alternately, so the two runs of a pair meet the same load.

The headline is the median time a save spent answering the probes, measured by the probe callback
around its work (the `probe_s` metric): the training loop waits for it, so it is the extra wall
time per save. Above it, the cross-check: (wall time with probes - without) / saves, per pair,
which the rest of the machine's load disturbs far more on a shared machine.

    python bench/probe_cost.py [--pairs 3] [--max-steps N] [--max-new-tokens 48] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROBES = ["What is the capital of France?", "What is the capital of Peru?", "What is the capital of Japan?"]


def demo_preset(ws, probes: bool, max_new_tokens: int, max_steps: int | None):
    from presets import load_preset, resolve_paths

    overrides = [f"probes.prompts={json.dumps(PROBES)}", f"probes.max_new_tokens={max_new_tokens}"] if probes else []
    if max_steps:
        overrides.append(f"training.max_steps={max_steps}")
    return resolve_paths(load_preset("demo", ws.root, overrides), ws.root)


def timed_run(preset, run_dir: Path) -> tuple[float, list[float]]:
    """(wall seconds, the probe seconds of each save) of one training run."""
    from engine.sink import Sink
    from engine.train import train

    class ProbeTimes(Sink):
        def __init__(self):
            self.seconds: list[float] = []

        def metrics(self, step, values):
            if "probe_s" in values:
                self.seconds.append(values["probe_s"])

    sink = ProbeTimes()
    started = time.perf_counter()
    result = train(preset, run_dir, sink)
    wall = time.perf_counter() - started
    assert result.status == "completed", result
    return wall, sink.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="pairs of runs, with and without probes")
    parser.add_argument("--max-steps", type=int, help="train this many steps instead of the demo's 210 (a busy machine)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="probes.max_new_tokens (the schema's default: 48)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for this process (on a crowded machine, 1)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    from transformers.utils import logging as hf_logging

    import engine.train  # noqa: F401  imported before the clock starts: both runs of a pair pay no import
    from engine.demo_data import write_demo_dataset
    from engine.tiny import make_tiny_model
    from jobs.workspace import Workspace

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    root = Path(tempfile.mkdtemp(prefix="probe-cost-"))
    try:
        ws = Workspace(root / "ws").ensure()  # laid out as `tunebench demo` lays it out
        make_tiny_model(ws.models_dir / "tiny")
        write_demo_dataset(ws.data_dir / "demo_capitals.json")
        presets = {probed: demo_preset(ws, probed, args.max_new_tokens, args.max_steps) for probed in (True, False)}
        timed_run(presets[True], root / "warmup")  # one-time costs (kernels, templates, allocator) land in no pair
        walls: dict[bool, list[float]] = {True: [], False: []}
        per_save_diffs, callback_times = [], []
        saves = 0
        for pair in range(args.pairs):
            for probed in ((True, False) if pair % 2 == 0 else (False, True)):
                run_dir = root / f"run-{pair}-{'probes' if probed else 'plain'}"  # outside the workspace: no data cache
                wall, seconds = timed_run(presets[probed], run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)
                walls[probed].append(wall)
                if probed:
                    saves = len(seconds)
                    callback_times += seconds
            per_save_diffs.append((walls[True][-1] - walls[False][-1]) / max(saves, 1))
            print(f"pair {pair}: with probes {walls[True][-1]:.2f} s, without {walls[False][-1]:.2f} s, {saves} saves, "
                  f"probing per save {', '.join(f'{s:.2f}' for s in callback_times[-saves:])} s", flush=True)
        steps = args.max_steps or 210
        print(f"demo preset, {steps} steps, {len(PROBES)} probes × max_new_tokens {args.max_new_tokens}, {saves} saves per run, "
              f"{args.pairs} pair(s), {os.cpu_count()} CPU(s), {torch.get_num_threads()} torch thread(s), "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"wall_with_probes_s = {statistics.median(walls[True]):.2f} s")
        print(f"wall_without_probes_s = {statistics.median(walls[False]):.2f} s")
        print(f"probe_cost_per_save_wall_diff = {statistics.median(per_save_diffs):.3f} s")
        print(f"probe_cost_per_save = {statistics.median(callback_times):.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
