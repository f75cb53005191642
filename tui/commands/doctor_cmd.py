"""`tunebench doctor RUN|PRESET`: why a run's loss does not converge; what a preset's data and memory look like.

    tunebench doctor RUN         a run in the store (id, id prefix or name), or a run folder / metrics.jsonl path:
                                 the metric rules on its whole history, with a plot of the loss
    tunebench doctor PRESET      a train preset (name or YAML path): the data findings and the memory preflight

The store is tried first, then run folders, then presets. Exit code 1 when a finding is an error.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tui.commands.common import CliError, console, print_table, workspace

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
SPARK = "▁▂▃▄▅▆▇█"
PLOT_WIDTH = 60
PLOT_HEIGHT = 8


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="explain a run's loss (RUN), or check a preset's data and memory before training (PRESET)",
        description=(
            "With a run (id, prefix, name, or a run folder): the doctor's findings on its metrics. "
            "With a train preset: data findings and the peak GPU memory estimate, with the knobs that make it fit."
        ),
    )
    parser.add_argument("target", help="run id / prefix / name, run folder or metrics.jsonl, or train preset name / YAML path")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="preset override, e.g. --set training.batch_size=2 (PRESET only; repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings (and the memory estimate) as JSON")
    parser.add_argument("--gpu-free", type=float, metavar="GIB", help="PRESET: compare with this much free GPU memory instead of asking NVML")
    parser.add_argument("--no-data", action="store_true", help="PRESET: skip loading the data (memory preflight only)")
    parser.add_argument("--fix", nargs="?", type=int, const=1, metavar="N",
                        help="RUN: save a copy of the run's preset with the Nth suggested fix applied (default 1, the "
                             "most severe) as <preset>-fixN, to review and submit")
    parser.set_defaults(handler=_doctor)


# --------------------------------------------------------------------------- dispatch


def _doctor(args: argparse.Namespace) -> int:
    ws = workspace(args)
    target = args.target
    # An exact run id or name, then a run folder, then a preset, and only then a run-name prefix:
    # `doctor mine` means the preset mine, not the run mine-5ep.
    run = _find_run(ws, target, exact=True)
    if run is not None:
        return _doctor_stored_run(args, ws, run)
    from engine.doctor.checkup import run_folder

    folder = run_folder(target)
    if folder is not None:
        return _doctor_run_folder(args, folder)
    preset = _find_preset(ws, target, args.overrides)
    if preset is not None:
        prefixed = _find_run(ws, target, ambiguous_ok=True)
        if prefixed is not None:
            console(stderr=True).print(f"[yellow]note:[/] checking the preset {target}; for the run {prefixed.name} "
                                       f"give its name or id: tunebench doctor {prefixed.id}")
        return _doctor_preset(args, ws, preset)
    run = _find_run(ws, target)
    if run is not None:
        return _doctor_stored_run(args, ws, run)
    raise CliError(
        f"{target!r} is neither a run (in {ws.store_db}), a run folder, nor a preset: "
        "`tunebench ls` lists the runs, `tunebench presets list` the presets"
    )


def _find_run(ws, ref: str, *, exact: bool = False, ambiguous_ok: bool = False):
    if not ws.store_db.is_file():
        return None  # looking must not create a store
    from jobs.store import AmbiguousRun, RunNotFound, open_store

    try:
        return open_store(ws).resolve_run(ref, exact=exact)
    except AmbiguousRun:
        if ambiguous_ok:
            return None
        raise  # several runs match: say so rather than guess
    except RunNotFound:
        return None


def _find_preset(ws, target: str, overrides: list[str]):
    from presets import PresetError, find_preset_file, load_preset

    try:
        find_preset_file(target, ws.root)
    except PresetError:
        return None
    preset = load_preset(target, ws.root, overrides)  # a broken preset is reported as such (PresetError)
    if preset.kind != "train":
        raise CliError(f"{target} is a {preset.kind} preset; the doctor checks train presets and runs")
    return preset


# --------------------------------------------------------------------------- runs


def _doctor_stored_run(args, ws, run) -> int:
    from engine.doctor.checkup import check_run
    from jobs.store import open_store

    store = open_store(ws)
    if run.kind != "train":
        raise CliError(f"run {run.id} is a {run.kind} job: the doctor reads training runs")
    checkup = check_run(store.metrics_since(run.id), run.preset_yaml, info=run.info, total_steps=run.total_steps,
                        stored_findings=store.findings(run.id))
    title = f"run {run.id} ({run.name}) — {run.state}, step {run.step}" + (f"/{run.total_steps}" if run.total_steps else "")
    code = _report_run(args, title, checkup)
    if args.fix is not None:
        from tui.fixes import change_text, fix_copy, fixable

        found = fixable([f.to_dict() for f in checkup.findings])
        if not 1 <= args.fix <= len(found):
            raise CliError(f"--fix {args.fix}: this run has {len(found)} finding(s) with a suggested fix")
        change = found[args.fix - 1]["change"]
        name, path = fix_copy(ws, run.id, change)
        console(stderr=True).print(f"saved [bold]{name}[/] ({change_text(change)}): {path}\n"
                                   f"review it, then: tunebench submit {name}", highlight=False)
    return code


def _doctor_run_folder(args, folder: Path) -> int:
    from engine.doctor.checkup import check_run_folder

    return _report_run(args, f"run folder {folder}", check_run_folder(folder))


def _report_run(args, title: str, checkup) -> int:
    series, findings, memory = checkup.series, checkup.findings, checkup.memory
    if args.json:
        payload = {"target": title, "findings": [f.to_dict() for f in findings], "memory": memory,
                   "points": {name: len(points) for name, points in series.items()}}
        print(json.dumps(payload, indent=1, default=str))
        return 1 if checkup.has_errors else 0
    out = console()
    out.print(f"[bold]doctor:[/] {title}")
    loss = series.get("loss", [])
    if not loss:
        out.print("  no loss reported yet: nothing to diagnose")
    else:
        out.print(loss_plot(loss, series.get("eval_loss", [])))
        finite = [v for _, v in loss if math.isfinite(v)]
        if finite:
            out.print(f"  loss {len(loss)} points: first {finite[0]:.4g}, min {min(finite):.4g}, last {finite[-1]:.4g}")
        evals = [v for _, v in series.get("eval_loss", []) if math.isfinite(v)]
        if evals:
            out.print(f"  eval loss {len(evals)} points: min {min(evals):.4g}, last {evals[-1]:.4g}")
        for name in ("grad_norm", "lr"):
            values = [v for _, v in series.get(name, [])]
            finite = [v for v in values if math.isfinite(v)]
            if finite:
                out.print(f"  {name:<9} {sparkline(values)}  {min(finite):.3g} … {max(finite):.3g}", highlight=False)
    if memory:
        from engine.doctor.memory import format_bytes

        out.print(
            f"  memory: estimated {format_bytes(memory.get('estimate_torch_bytes'))} (torch) — measured peak reserved "
            f"{format_bytes(memory.get('measured_peak_reserved'))} (ratio {memory.get('ratio')})"
        )
    _print_findings(out, findings, healthy="no findings: the curves look healthy")
    return 1 if checkup.has_errors else 0


# --------------------------------------------------------------------------- presets


def _doctor_preset(args, ws, preset) -> int:
    import logging

    from presets import resolve_paths

    from engine.doctor.checkup import check_preset
    from engine.doctor.memory import GiB
    from jobs.store import open_store

    preset = resolve_paths(preset, ws.root)
    out = console()
    # The findings list the data pipeline's warnings; without a handler Python would print them too.
    logging.getLogger("tunebench.data").addHandler(logging.NullHandler())
    gpu_free = int(args.gpu_free * GiB) if args.gpu_free is not None else None
    checkup = check_preset(preset, load_data=not args.no_data, gpu_free_bytes=gpu_free)
    findings, report, estimate, memory_note = checkup.findings, checkup.data_report, checkup.estimate, checkup.memory_note
    data_note = "skipped (--no-data)" if args.no_data else None
    from jobs.estimate import duration_estimate, steps_of

    steps = steps_of(preset, report)
    seconds, basis = (duration_estimate(open_store(ws), preset.name, steps) if ws.store_db.is_file()
                      else (None, "no runs in this workspace yet"))
    if args.json:
        payload = {"preset": preset.name, "findings": [f.to_dict() for f in findings],
                   "data": data_note, "memory": estimate.to_dict() if estimate else memory_note,
                   "steps": steps, "estimated_seconds": seconds}
        print(json.dumps(payload, indent=1, default=str))
        return 1 if checkup.has_errors else 0

    out.print(f"[bold]doctor:[/] preset [bold cyan]{preset.name}[/]")
    if data_note:
        out.print(f"  data: {data_note}")
    elif report is not None:
        out.print(
            f"  data: {report.train_samples} training / {report.eval_samples} validation samples, "
            f"{report.supervised_share:.0%} of {report.total_tokens} tokens supervised, longest {report.length.max} tokens"
        )
    if steps is not None:
        from tui import format as fmt

        out.print(f"  cost: {steps:,} steps · " + (f"≈ {fmt.duration(seconds)} ({basis})" if seconds is not None
                                                   else f"time: {basis}"), highlight=False)
    if estimate is not None:
        print_table(out, memory_table(estimate))
        if estimate.suggestions:
            print_table(out, suggestion_table(estimate))
    else:
        out.print(f"  memory: {memory_note}")
    _print_findings(out, findings, healthy="no findings on the data or the memory")
    return 1 if checkup.has_errors else 0


# --------------------------------------------------------------------------- rendering


def sparkline(values: list[float], width: int = PLOT_WIDTH) -> str:
    """Unicode block sparkline of finite values, resampled (by bucket mean) to at most `width` columns."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(values) > width:
        size = len(values) / width
        buckets = [values[int(i * size) : max(int(i * size) + 1, int((i + 1) * size))] for i in range(width)]
        values = [_bucket_mean(b) for b in buckets]
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join("×" if not math.isfinite(v) else SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))] for v in values)


def _bucket_mean(bucket: list[float]) -> float:
    if any(not math.isfinite(v) for v in bucket):
        return math.nan
    return sum(bucket) / len(bucket)


def loss_plot(loss: list[tuple[int, float]], eval_loss: list[tuple[int, float]] | None = None,
              width: int = PLOT_WIDTH, height: int = PLOT_HEIGHT):
    """A small character plot of the loss (•) and eval loss (◆) against the step; × marks NaN/Inf."""
    from rich.text import Text

    points = [(s, v) for s, v in loss]
    evals = [(s, v) for s, v in (eval_loss or [])]
    finite = [v for _, v in points + evals if math.isfinite(v)]
    text = Text()
    if not finite:
        text.append("  (every loss value is NaN/Inf)\n", style="red")
        return text
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    first = min(s for s, _ in points + evals)
    last = max(s for s, _ in points + evals)
    steps = last - first or 1
    grid = [[" "] * width for _ in range(height)]
    styles = [[""] * width for _ in range(height)]

    def put(step, value, mark, style):
        column = min(width - 1, int((step - first) / steps * (width - 1)))
        if not math.isfinite(value):
            grid[0][column], styles[0][column] = "×", "bold red"
            return
        row = height - 1 - min(height - 1, int((value - low) / span * (height - 1) + 0.5))
        grid[row][column], styles[row][column] = mark, style

    for step, value in points:
        put(step, value, "•", "green")
    for step, value in evals:
        put(step, value, "◆", "magenta")
    for row in range(height):
        label = high - span * row / (height - 1)
        text.append(f"  {label:>8.4g} │", style="dim")
        for column in range(width):
            text.append(grid[row][column], style=styles[row][column] or None)
        text.append("\n")
    text.append(f"  {'':>8} └{'─' * width}\n", style="dim")
    text.append(f"  {'':>8}  step {first}{' ' * max(1, width - len(str(first)) - len(str(last)) - 10)}step {last}\n", style="dim")
    text.append("  • loss", style="green")
    if evals:
        text.append("   ◆ eval loss", style="magenta")
    text.append("\n")
    return text


def _print_findings(out, findings, *, healthy: str) -> None:
    from rich.panel import Panel
    from rich.text import Text

    shown = list(findings)
    if not shown:
        out.print(f"[green]{healthy}[/]")
        return
    for finding in shown:
        style = SEVERITY_STYLE.get(finding.severity, "")
        steps = ""
        if finding.step_start is not None:
            steps = f"step {finding.step_start}" if finding.step_end in (None, finding.step_start) else f"steps {finding.step_start}–{finding.step_end}"
        body = Text()
        body.append(finding.title + "\n", style="bold")
        if finding.evidence:
            shown_evidence = ", ".join(f"{k}={_short(v)}" for k, v in finding.evidence.items() if k != "kind")
            body.append("evidence: " + shown_evidence + "\n", style="dim")
        body.append("→ " + finding.advice)
        if getattr(finding, "change", None):
            from tui.fixes import change_text

            body.append(f"\nfix: {change_text(finding.change)}  (--fix)", style="cyan")
        heading = f"{finding.severity}: {finding.rule}" + (f"  ({steps})" if steps else "")
        out.print(Panel(body, title=heading, title_align="left", border_style=style, expand=True))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 8:
        return "[" + ", ".join(_short(v) for v in value[:8]) + ", …]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def memory_summary(estimate) -> str:
    details = estimate.details
    return (
        f"{details['total_params'] / 1e6:.0f}M parameters ({details['weights_dtype']}), "
        f"{details['trainable_params'] / 1e6:.2f}M trainable, batch {details['batch_size']} × {details['seq_len']} tokens, "
        f"{details['precision']}, {details['optimizer']}"
        + (", gradient checkpointing" if details["gradient_checkpointing"] else "")
        + f"; the peak falls in the {details['peak_phase']}"
    )


def memory_table(estimate):
    from rich.console import Group
    from rich.table import Table

    from engine.doctor.memory import format_bytes

    table = Table(title="peak GPU memory (estimate)", title_justify="left")
    table.add_column("part")
    table.add_column("size", justify="right")
    table.add_column("share", justify="right")
    total = estimate.total_bytes or 1
    for part, value in estimate.parts.items():
        if value:
            table.add_row(part.replace("_", " "), format_bytes(value), f"{value / total:.0%}")
    table.add_row("[bold]total[/]", f"[bold]{format_bytes(estimate.total_bytes)}[/]", "100%")
    lines = [f"  {memory_summary(estimate)}", table]
    if estimate.gpu_free_bytes is not None:
        verdict = "[green]fits[/]" if estimate.fits else "[red]does not fit[/]"
        lines.append(f"  GPU free: {format_bytes(estimate.gpu_free_bytes)} — {verdict}")
    return Group(*lines)


def suggestion_table(estimate):
    from rich.table import Table

    from engine.doctor.memory import format_bytes

    table = Table(title="knobs that lower the peak (apply each with --set)", title_justify="left")
    table.add_column("knob", overflow="fold")
    table.add_column("settings", overflow="fold")
    table.add_column("estimate", justify="right", no_wrap=True)
    table.add_column("fits", no_wrap=True)
    for suggestion in estimate.suggestions:
        fits = "" if suggestion.fits is None else ("[green]yes[/]" if suggestion.fits else "[red]no[/]")
        table.add_row(suggestion.knob, " ".join(suggestion.overrides), format_bytes(suggestion.total_bytes), fits)
    return table
