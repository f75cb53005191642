"""`tunebench submit | ls | show | logs | cancel | resume | retry | rm | engine …`: the job queue, headless.

Nothing here imports torch: the verbs talk to the run store and the engine process only.
"""

from __future__ import annotations

import argparse
import sys
import time

from tui import format as fmt
from tui.commands.common import (
    CliError, add_json_arg, add_preset_args, confirm, console, print_json, print_table, run_json, workspace,
)

STATE_STYLE = {
    "queued": "cyan", "running": "bold yellow", "completed": "green", "failed": "bold red",
    "cancelled": "magenta", "interrupted": "yellow",
}


def register(subparsers) -> None:
    submit = subparsers.add_parser("submit", help="queue a train, eval or merge job (starts the engine if needed)")
    add_preset_args(submit)
    submit.add_argument("--name", help="run name (default: the preset's; made unique with -2, -3, …)")
    submit.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    submit.add_argument("--dry-run", action="store_true", help="go through the queue and a job process, train nothing")
    submit.add_argument("--no-engine", action="store_true", help="only queue it; do not start the engine")
    submit.set_defaults(handler=_submit)

    ls = subparsers.add_parser("ls", help="list runs, newest first")
    ls.add_argument("--state", action="append", help="only runs in this state (repeatable)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50; 0 = all)")
    ls.add_argument("--filter", "-f", dest="filter", default="", metavar="QUERY",
                    help="only runs matching every word: text, or FIELD:text with FIELD one of name, state, preset, "
                         "method, tag, kind, note, id; #x is tag:x (e.g. 'state:completed #baseline')")
    ls.add_argument("--sort", metavar="COLUMN", help="sort by name, state, progress, eta, step, loss, best, elapsed, created, "
                                                     "kind, gpu, findings or tags (default: newest first)")
    ls.add_argument("--desc", action="store_true", help="with --sort: highest first")
    add_json_arg(ls)
    ls.set_defaults(handler=_ls)

    show = subparsers.add_parser("show", help="a run's details, checkpoints and recent events")
    show.add_argument("run", help="run id, unique id prefix, or name")
    show.add_argument("--events", type=int, default=15, help="how many recent events to show")
    add_json_arg(show)
    show.set_defaults(handler=_show)

    logs = subparsers.add_parser("logs", help="print a run's log (runs/<id>/run.log)")
    logs.add_argument("run", help="run id, unique id prefix, or name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the run ends")
    logs.set_defaults(handler=_logs)

    cancel = subparsers.add_parser("cancel", help="cancel a queued run, or stop a running one after a checkpoint")
    cancel.add_argument("run", help="run id, unique id prefix, or name")
    cancel.add_argument("--wait", action="store_true", help="wait until a running run has stopped")
    cancel.set_defaults(handler=_cancel)

    resume = subparsers.add_parser("resume", help="continue an interrupted, cancelled or failed run from a checkpoint")
    resume.add_argument("run", help="run id, unique id prefix, or name")
    resume.add_argument("--from", dest="from_step", type=int, metavar="STEP",
                        help="the checkpoint's step (default: the last); later checkpoints and metrics are discarded")
    resume.set_defaults(handler=_resume)

    retry = subparsers.add_parser("retry", help="run an ended run again from the start, as a new run")
    retry.add_argument("run", help="run id, unique id prefix, or name")
    retry.set_defaults(handler=_retry)

    rm = subparsers.add_parser("rm", help="delete a run with its files (checkpoints, results)")
    rm.add_argument("run", nargs="+", help="run ids, unique id prefixes, or names")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(handler=_rm)

    engine = subparsers.add_parser("engine", help="the background engine that runs queued jobs")
    actions = engine.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("start", help="start it detached (survives closing the terminal)").set_defaults(handler=_engine_start)
    stop = actions.add_parser("stop", help="stop it: running jobs checkpoint and end interrupted")
    stop.add_argument("--timeout", type=float, default=600, help="seconds to wait for it to exit")
    stop.set_defaults(handler=_engine_stop)
    status = actions.add_parser("status", help="is it running, on which GPUs, doing what (exit 1 when it is not running)")
    add_json_arg(status)
    status.set_defaults(handler=_engine_status)
    actions.add_parser("run", help="run it in the foreground (Ctrl-C stops it)").set_defaults(handler=_engine_run)


def _store(args):
    from jobs.store import open_store

    return open_store(workspace(args))


def _state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _number(value, fmt: str = ".4g") -> str:
    return "" if value is None else format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _progress(run) -> str:
    if run.total_steps:
        return f"{run.step}/{run.total_steps}"
    return str(run.step) if run.step else ""


# --------------------------------------------------------------------------- verbs


def _submit(args: argparse.Namespace) -> int:
    from jobs import control

    ws = workspace(args)
    run = control.submit(ws, args.preset, name=args.name, priority=args.priority, overrides=args.overrides,
                         dry_run=args.dry_run, start=not args.no_engine)
    out = console()
    out.print(f"queued {run.kind} run [bold]{run.id}[/] ({run.name})" + (" [dim](dry run)[/]" if args.dry_run else ""))
    out.print(f"[dim]follow it: tunebench logs -f {run.id}   ·   tunebench show {run.id}[/]")
    return 0


def _ls(args: argparse.Namespace) -> int:
    from rich.table import Table

    from jobs.engine_process import engine_status

    from jobs.compare import filter_runs, sort_runs

    store = _store(args)
    runs = filter_runs(store.list_runs(states=args.state), args.filter)
    if args.sort:
        runs = sort_runs(runs, args.sort, descending=args.desc)
    shown = runs[: args.limit] if args.limit else runs
    if args.json:
        print_json({"runs": [run_json(run) for run in shown], "total": len(runs),
                    "engine": engine_json(engine_status(workspace(args), store))})
        return 0
    out = console()
    if not runs:
        out.print("no runs match the filter" if args.filter else "no runs yet: `tunebench submit PRESET` queues one")
    else:
        table = Table(box=None, header_style="bold")
        for column in ("id", "name", "state"):
            table.add_column(column, no_wrap=True)  # ids are what the user copies: never truncated
        for column in ("step", "loss", "best eval", "doctor", "took"):
            table.add_column(column, no_wrap=True, justify="right")
        labelled = any(run.tags or run.note for run in shown)
        if labelled:  # the user's tags and note, last: the column that may wrap
            table.add_column("tags · note")
        for run in shown:
            name = run.name if run.kind == "train" else f"{run.name} [dim]({run.kind})[/]"
            labels = [_labels(run)] if labelled else []
            table.add_row(run.id, name, _state(run.state), _progress(run), _number(run.last_loss),
                          _number(run.best_eval_loss), str(run.findings or ""), _duration(run.running_time()), *labels)
        print_table(out, table)
        if len(shown) < len(runs):
            out.print(f"[dim]{len(runs) - len(shown)} older runs not shown (--limit 0 shows all)[/]")
    out.print(f"[dim]{engine_status(workspace(args), store).describe()}[/]")
    return 0


def _labels(run) -> str:
    from rich.markup import escape

    tags = " ".join(f"[cyan]#{tag}[/]" for tag in run.tags)
    return " ".join(part for part in (tags, escape(run.note)) if part)


def _show(args: argparse.Namespace) -> int:
    from rich.table import Table

    store = _store(args)
    run = store.resolve_run(args.run)
    ws = workspace(args)
    if args.json:
        print_json(_show_json(store, ws, run, args.events))
        return 0
    out = console()
    out.print(f"[bold]{run.id}[/]  {run.name}  ({run.kind})  {_state(run.state)}"
              + ("  [dim]dry run[/]" if run.dry_run else ""))
    fields = [
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created_at))),
        ("started", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started_at)) if run.started_at else ""),
        ("duration", _duration(run.running_time())),
        ("attempt", str(run.attempt) if run.attempt > 1 else ""),
        ("priority", str(run.priority) if run.priority else ""),
        ("progress", _progress(run) + (f" ({run.progress:.0%})" if run.progress is not None else "")),
        ("last loss", _number(run.last_loss)),
        ("best eval loss", f"{run.best_eval_loss:.4g} at step {run.best_eval_step}" if run.best_eval_loss is not None else ""),
        ("device", run.gpu and (f"GPU {run.gpu}" if run.gpu != "cpu" else "CPU") or ""),
        ("parent", f"{run.parent_run}" + (f" @ step {run.parent_checkpoint}" if run.parent_checkpoint else "") if run.parent_run else ""),
        ("folder", str(ws.run_dir(run.id))),
    ]
    for key in ("method", "precision", "trainable_params", "train_samples", "eval_samples", "out_dir"):
        if run.info.get(key) is not None:
            fields.append((key.replace("_", " "), f"{run.info[key]:,}" if isinstance(run.info[key], int) else str(run.info[key])))
    for key, value in fields:
        if value:
            # soft_wrap: a path stays on one line however narrow the terminal or pipe (scripts read it)
            out.print(f"  [dim]{key:>15}[/]  {value}", highlight=False, soft_wrap=True)
    if run.error:
        out.print(f"  [red]{'error':>15}[/]  {run.error}", markup=True)
    if run.advice:
        out.print(f"  [cyan]{'advice':>15}[/]  {run.advice}")
    checkpoints = store.list_checkpoints(run.id)
    if checkpoints:
        table = Table("step", "eval loss", "size", "", title="checkpoints", box=None, title_justify="left")
        for row in checkpoints:
            flags = " ".join(f for f, on in (("best", row.best), ("kept", row.keep)) if on)
            size = fmt.size(row.size_bytes) if row.size_bytes else ""  # the unit the TUI shows
            table.add_row(str(row.step), _number(row.metrics.get("eval_loss")), size, flags)
        print_table(out, table)
    findings = store.findings(run.id)
    if findings:
        out.print(f"[bold]doctor[/] ({len(findings)} finding(s))")
        for finding in findings[-5:]:
            out.print(f"  [{ 'red' if finding.get('severity') == 'error' else 'yellow'}]{finding.get('severity', '')}[/] "
                      f"{finding.get('title', finding.get('rule', ''))}")
            if finding.get("advice"):
                out.print(f"      [dim]→ {finding['advice']}[/]")
    events = store.events_since(run.id)[-args.events:] if args.events else []
    if events:
        out.print("[bold]events[/]")
        for event in events:
            style = {"error": "red", "warning": "yellow"}.get(event.level, "dim")
            stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
            step = f" step {event.step}" if event.step is not None else ""
            out.print(f"  [{style}]{stamp}{step}[/] ", end="")
            out.print(event.text, markup=False, highlight=False)
    return 0


def _logs(args: argparse.Namespace) -> int:
    store = _store(args)
    run = store.resolve_run(args.run)
    path = workspace(args).run_dir(run.id) / "run.log"
    out = sys.stdout
    position = 0

    def pump() -> None:
        nonlocal position
        if not path.exists():
            return
        with path.open("rb") as handle:
            handle.seek(position)
            chunk = handle.read()
        position += len(chunk)
        if chunk:
            out.write(chunk.decode("utf-8", errors="replace"))
            out.flush()

    pump()
    if not args.follow:
        if not path.exists():
            console(stderr=True).print(f"[dim]{run.id} has no log yet ({run.state})[/]")
        return 0
    while True:
        current = store.get_run(run.id)
        pump()
        if current is None or current.state not in ("queued", "running"):
            pump()
            console(stderr=True).print(f"[dim]run {run.id} {current.state if current else 'removed'}[/]")
            return 0
        time.sleep(0.25)


def _cancel(args: argparse.Namespace) -> int:
    from jobs import control

    ws = workspace(args)
    run = control.cancel(ws, args.run)
    out = console()
    if run.state == "cancelled":
        out.print(f"cancelled {run.id} ({run.name})")
        return 0
    out.print(f"{run.id} is stopping at the next step boundary (it saves a checkpoint first)")
    if args.wait:
        store = _store(args)
        while (current := store.get_run(run.id)) is not None and current.state == "running":
            time.sleep(0.25)
        out.print(f"{run.id}: {_state(current.state) if current else 'removed'}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from jobs import control

    run = control.resume(workspace(args), args.run, args.from_step)
    step = run.info.get("resume_step")
    console().print(f"queued {run.id} ({run.name}) to resume" + (f" from step {step}" if step else "")
                    + f", attempt {run.attempt}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from jobs import control

    run = control.retry(workspace(args), args.run)
    console().print(f"queued [bold]{run.id}[/] ({run.name}), a retry of {run.parent_run}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from jobs import control

    store = _store(args)
    runs = [store.resolve_run(ref) for ref in args.run]
    listing = ", ".join(f"{r.id} ({r.name}, {r.state})" for r in runs)
    if not confirm(f"delete {listing} and all their files?", args.yes):
        console().print("nothing deleted")
        return 1
    for run in runs:
        control.remove(workspace(args), run.id)
        console().print(f"deleted {run.id} ({run.name})")
    return 0


def _engine_start(args: argparse.Namespace) -> int:
    from jobs.engine_process import engine_status, start_engine

    ws = workspace(args)
    already = engine_status(ws).running
    status = start_engine(ws)
    console().print(("already running: " if already else "started: ") + status.describe())
    console().print(f"[dim]log: {ws.engine_log}[/]")
    return 0


def _engine_stop(args: argparse.Namespace) -> int:
    from jobs.engine_process import stop_engine

    stopped = stop_engine(workspace(args), timeout=args.timeout)
    console().print("engine stopped" if stopped else "no engine was running")
    return 0


def _engine_status(args: argparse.Namespace) -> int:
    from jobs.engine_process import engine_status

    status = engine_status(workspace(args), _store(args))
    if args.json:
        print_json(engine_json(status))
    else:
        console().print(status.describe())
    return 0 if status.running else 1


def engine_json(status) -> dict:
    return {"running": status.running, "pid": status.pid, "gpus": list(status.gpus), "current_runs": list(status.current_runs),
            "queue_length": status.queue_length, "started_at": status.started_at}


def _show_json(store, ws, run, events: int) -> dict:
    from jobs.targets import eval_results_for

    return {
        **run_json(run),
        "folder": str(ws.run_dir(run.id)),
        "info": run.info,
        "checkpoints": [{"step": row.step, "path": row.path, "eval_loss": row.metrics.get("eval_loss"), "size_bytes": row.size_bytes,
                         "best": bool(row.best), "keep": bool(row.keep)} for row in store.list_checkpoints(run.id)],
        "findings": store.findings(run.id),
        "events": [{"time": e.time, "level": e.level, "step": e.step, "text": e.text}
                   for e in (store.events_since(run.id)[-events:] if events else [])],
        "eval_results": [row_json(row) for row in eval_results_for(store, run.id)],
    }


def row_json(row) -> dict:
    """An evaluation result of the store as --json shows it (`results`: engine.evaluate's results.json)."""
    payload = row.payload if isinstance(row.payload, dict) else {}
    return {"eval_run": row.run_id, "created_at": row.created_at, "target_run": payload.get("target_run"),
            "checkpoint": payload.get("checkpoint"), "out_dir": payload.get("out_dir"), "results": payload.get("result")}


def _engine_run(args: argparse.Namespace) -> int:
    from jobs.engine_process import EXIT_ALREADY_RUNNING, run_engine

    code = run_engine(workspace(args).ensure())
    if code == EXIT_ALREADY_RUNNING:
        raise CliError(f"an engine is already running for {workspace(args).root}: `tunebench engine stop` first")
    return code
