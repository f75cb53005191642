"""`tunebench demo`: from nothing to a run that visibly learns.

Makes the tiny model and the generated capitals dataset in the workspace (once), starts the engine,
queues `demo` and `demo-diverge`, and opens the TUI on the demo's dashboard; when the run completes
the chat pane opens with base and fine-tuned side by side. `--headless` does the same in plain
terminal output, for scripts and tests.
"""

from __future__ import annotations

import argparse
import sys
import time

from tui.commands.common import CliError, console, print_json, workspace

DEMO_PRESET = "demo"
DIVERGE_PRESET = "demo-diverge"
DPO_PRESET = "demo-dpo"
PAIRS_FILE, PAIRS_VAL_FILE = "demo_pairs.json", "demo_pairs_val.json"
POLL_SECONDS = 0.5


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the demo: tiny model, generated data, a run that learns, base vs fine-tuned")
    parser.add_argument("--headless", action="store_true",
                        help="no TUI: follow the run here, then print base and fine-tuned answers")
    parser.add_argument("--no-diverge", action="store_true", help="do not queue demo-diverge behind the demo")
    parser.add_argument("--dpo", action="store_true",
                        help="then demo-dpo: DPO from the demo's adapter on generated pairs (held-out pair accuracy before and after)")
    parser.add_argument("--json", action="store_true", help="with --headless: print the comparison as JSON")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a field of the demo preset (repeatable)")
    parser.set_defaults(handler=_demo)


def prepare_demo_workspace(ws, out, *, pairs: bool = False) -> None:
    """The tiny model and the demo dataset (and, with `pairs`, the DPO demo's pairs) inside the
    workspace; kept when already there."""
    model_dir = ws.models_dir / "tiny"
    if (model_dir / "config.json").is_file():
        out.print(f"[dim]tiny model: {model_dir} (already there)[/]")
    else:
        out.print(f"making the tiny model in {model_dir} …")
        from engine.tiny import make_tiny_model

        tmp = model_dir.with_name("tiny.partial")
        make_tiny_model(tmp)
        tmp.replace(model_dir)  # a crash mid-way leaves no half model under the real name
    data_file = ws.data_dir / "demo_capitals.json"
    if data_file.is_file():
        out.print(f"[dim]demo data: {data_file} (already there)[/]")
    else:
        from engine.demo_data import write_demo_dataset

        write_demo_dataset(data_file)
        out.print(f"wrote the demo dataset to {data_file}")
    if pairs and not (ws.data_dir / PAIRS_VAL_FILE).is_file():
        from engine.demo_data import write_demo_preference_dataset

        train, val = write_demo_preference_dataset(ws.data_dir / PAIRS_FILE, ws.data_dir / PAIRS_VAL_FILE)
        out.print(f"wrote the DPO demo's pairs to {train} and {val}")


def _active_run(store, preset_name: str):
    """A queued or running run of this demo preset (names are `demo`, `demo-2`, … as the store numbers them)."""
    for run in store.list_runs(states=("queued", "running")):
        suffix = run.name[len(preset_name):]
        if run.kind == "train" and run.name.startswith(preset_name) and (suffix == "" or suffix.lstrip("-").isdigit()):
            return run
    return None


def _demo(args: argparse.Namespace) -> int:
    from jobs import control
    from jobs.store import open_store

    ws = workspace(args).ensure()
    # With --json, stdout holds the JSON alone: the story and the progress bar go to stderr.
    out = console(stderr=args.json)
    out.print(f"[bold]tunebench demo[/] in workspace {ws.root}")
    prepare_demo_workspace(ws, out, pairs=args.dpo)
    store = open_store(ws)

    run = None if args.overrides else _active_run(store, DEMO_PRESET)
    if run is not None:
        out.print(f"the demo run {run.id} is {run.state} already: following it")
    else:
        run = control.submit(ws, DEMO_PRESET, name=DEMO_PRESET, overrides=args.overrides, start=False)
        out.print(f"queued the demo run {run.id}")
    dpo = None
    if args.dpo:
        dpo = _active_run(store, DPO_PRESET) or control.submit(
            ws, DPO_PRESET, name=DPO_PRESET, overrides=[f"model.start_from={run.id}"], start=False)
        out.print(f"queued {DPO_PRESET} ({dpo.id}) behind it: DPO from the demo's adapter on generated pairs")
    if not args.no_diverge and _active_run(store, DIVERGE_PRESET) is None:
        diverge = control.submit(ws, DIVERGE_PRESET, name=DIVERGE_PRESET, start=False)
        out.print(f"queued {DIVERGE_PRESET} ({diverge.id}) behind it: a learning rate far too high, for the doctor")
    status = control.ensure_engine(ws)
    out.print(f"engine: {status.describe()}")

    if args.headless or not sys.stdout.isatty():
        comparison = _follow_demo(ws, store, run.id, out)
        if dpo is None:
            if args.json:
                print_json(comparison)
            return 0
        shift = _follow_preference(ws, store, dpo.id, out)
        if args.json:  # one document: the SFT comparison and the pairs before / after DPO
            print_json({DEMO_PRESET: comparison, DPO_PRESET: shift})
        return 0
    from tui.app import run_app

    return run_app(str(ws.root), open_run=run.id, open_when_done="chat")


def _follow(store, run_id: str, label: str, out):
    """The run's progress bar until it ends; the ended run."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(f"[bold]{label}[/]"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(), console=out, transient=False) as bar:
        task = bar.add_task("train", total=None, loss="–")
        while True:
            run = store.get_run(run_id)
            loss = f"{run.last_loss:.3f}" if run.last_loss is not None else "–"
            bar.update(task, completed=run.step, total=run.total_steps, loss=loss)
            if run.state not in ("queued", "running"):
                return run
            time.sleep(POLL_SECONDS)


def _follow_demo(ws, store, run_id: str, out) -> dict:
    """Follow the demo run; then base and fine-tuned answer a training question (told on `out`)."""
    from rich.panel import Panel

    from jobs.chats import compare_on_training_question

    run = _follow(store, run_id, "demo", out)
    if run.state != "completed":
        raise CliError(f"the demo run ended {run.state}: {run.error or 'see tunebench logs ' + run_id}", run.advice, exit_code=1)
    out.print(f"[green]the demo run completed[/] in {run.running_time():.0f} s; best eval loss {run.best_eval_loss}")
    comparison = compare_on_training_question(ws, run_id)
    out.print(f"[bold]> {comparison['question']}[/]   (the training answer: {comparison['reference']})")
    for side in ("base", "fine-tuned"):
        exact = "[green]exact[/]" if comparison[side]["exact"] else "[red]not the answer[/]"
        out.print(Panel(comparison[side]["text"] or "(empty)", title=side, subtitle=exact, title_align="left"))
    return comparison


def _follow_preference(ws, store, run_id: str, out) -> dict:
    """Follow demo-dpo, then rank its held-out pairs with its starting adapter and with its result."""
    from jobs.targets import preference_before_after

    run = _follow(store, run_id, "demo-dpo", out)
    if run.state != "completed":
        raise CliError(f"the DPO demo run ended {run.state}: {run.error or 'see tunebench logs ' + run_id}", run.advice, exit_code=1)
    out.print(f"[green]the DPO demo run completed[/] in {run.running_time():.0f} s; ranking the held-out pairs …")
    shift = preference_before_after(ws, run_id)
    out.print(f"held-out pairs ({shift['pairs']}): the right answer more likely than the wrong one in "
              f"[bold]{shift['start']['accuracy']:.0%}[/] at the start (the SFT demo) and [bold]{shift['result']['accuracy']:.0%}[/] after DPO; "
              f"mean margin {shift['start']['margin']:+.2f} → {shift['result']['margin']:+.2f} (log-prob)")
    return shift
