"""What a run will cost before it is queued: its steps, the memory preflight, and how long it should
take, judged by the last run of the same preset in this workspace (the same machine).

The Submit dialog shows it; `submit_cost` reads the data (the tokenizer, the prepared-data cache) and
the model's config, so callers run it off the event loop. The engine is imported inside the function.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from jobs.store import Run, Store


@dataclass
class SubmitCost:
    steps: int | None = None
    samples: int | None = None  # training samples, when the data was read
    memory: str | None = None  # one line: the peak estimate against the free GPU memory
    fits: bool | None = None
    seconds: float | None = None  # estimated duration
    basis: str | None = None  # where the duration comes from (the earlier run), or why there is none
    problem: str | None = None  # why the steps are unknown


def preset_name_of(run: Run) -> str | None:
    """The name of the preset a run froze (its run name may differ: --name, -2 suffixes)."""
    try:
        data = yaml.safe_load(run.preset_yaml)
    except yaml.YAMLError:
        return None
    return str(data["name"]) if isinstance(data, dict) and data.get("name") else None


def pace_of_last_run(store: Store, preset_name: str) -> tuple[float, Run] | None:
    """(seconds per step, the run) of the newest train run of `preset_name` that did steps."""
    for run in store.list_runs(kind="train"):
        if run.state == "queued" or run.step <= 0 or run.dry_run or preset_name_of(run) != preset_name:
            continue
        seconds = run.running_time()
        if seconds:
            return seconds / run.step, run
    return None


def duration_estimate(store: Store, preset_name: str, steps: int | None) -> tuple[float | None, str]:
    """(seconds or None, where it comes from)."""
    found = pace_of_last_run(store, preset_name)
    if found is None:
        return None, f"no earlier run of {preset_name} here to time it by"
    pace, run = found
    if not steps:
        return None, f"{run.name} took {pace:.2f} s/step; the steps are unknown"
    return pace * steps, f"{run.name}: {pace:.2f} s/step over {run.step} steps"


def steps_of(preset, report) -> int | None:
    """Optimizer steps of a train preset: training.max_steps, else from the training samples of
    the data report (engine.data.DataReport; None when the data was not read)."""
    if preset.training.max_steps:
        return preset.training.max_steps
    if report is None:
        return None
    from engine.train import total_steps

    return total_steps(preset, report.train_samples)


def submit_cost(workspace, preset, store: Store, *, gpu_free_bytes: int | None = None) -> SubmitCost:
    """The cost of a validated train preset (others: steps and memory do not apply). `gpu_free_bytes`:
    what the memory estimate is compared with (default: NVML's reading of this machine)."""
    cost = SubmitCost()
    if getattr(preset, "kind", None) != "train":
        cost.problem = f"a {getattr(preset, 'kind', '?')} job: no training steps"
        return cost
    from engine.doctor.checkup import check_preset
    from engine.doctor.memory import format_bytes
    from presets import resolve_paths

    resolved = resolve_paths(preset, workspace.root)
    # With max_steps the data need not be read for the steps; the memory estimate still wants lengths.
    checkup = check_preset(resolved, load_data=not getattr(resolved.data, "streaming", False),
                           gpu_free_bytes=gpu_free_bytes)
    report = checkup.data_report
    cost.steps = steps_of(resolved, report)
    cost.samples = report.train_samples if report is not None else None
    if cost.steps is None:
        cost.problem = next((f.title for f in checkup.findings if f.severity == "error"), "the data could not be read")
    estimate = checkup.estimate
    if estimate is not None:
        cost.fits = estimate.fits
        line = f"peak ≈ {format_bytes(estimate.total_bytes)}"
        if estimate.gpu_free_bytes is not None:
            line += f" of {format_bytes(estimate.gpu_free_bytes)} free: " + ("fits" if estimate.fits else "does NOT fit")
        else:
            line += " (no GPU seen: not compared)"
        cost.memory = line
    else:
        cost.memory = checkup.memory_note
    cost.seconds, cost.basis = duration_estimate(store, preset.name, cost.steps)
    return cost
