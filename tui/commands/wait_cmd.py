"""`tunebench wait RUN` and `tunebench metrics RUN --csv | --json`: a run's outcome and its
numbers for scripts (jobs/export.py does the work)."""

from __future__ import annotations

import argparse
import sys

from tui.commands.common import CliError, console, print_json, run_json, workspace


def register(subparsers) -> None:
    from jobs.export import WAIT_CODES_HELP

    wait = subparsers.add_parser(
        "wait", help="block until a run ends; the exit code says how it ended",
        description="Block until the run is no longer queued or running, then exit with a code for its outcome.",
        epilog=WAIT_CODES_HELP)
    wait.add_argument("run", help="run id, unique id prefix, or name")
    wait.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (exit 6)")
    wait.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="how often to look (default 1)")
    wait.add_argument("--quiet", "-q", action="store_true", help="print nothing; only the exit code")
    wait.add_argument("--json", action="store_true", help="print the run as `show --json`'s RUN when it ends")
    wait.set_defaults(handler=_wait)

    metrics = subparsers.add_parser(
        "metrics", help="a run's metrics, one row per step, as CSV or JSON",
        description="Every metric the run logged, one row per step (step, time, then each metric).")
    metrics.add_argument("run", help="run id, unique id prefix, or name")
    shape = metrics.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="CSV (the default)")
    shape.add_argument("--json", action="store_true",
                       help='JSON: {"run": {id, name, state}, "columns": [...], "rows": [{step, time, METRIC: value}]}')
    metrics.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    metrics.set_defaults(handler=_metrics)


def _store(args):
    from jobs.store import open_store

    return open_store(workspace(args))


def _wait(args: argparse.Namespace) -> int:
    from jobs.export import wait_code, wait_for_run
    from tui import format as fmt

    if args.poll <= 0:
        raise CliError("--poll must be above 0 seconds")
    store = _store(args)
    run = store.resolve_run(args.run)
    err = console(stderr=True)
    if run.state in ("queued", "running") and not args.quiet:
        from jobs.engine_process import engine_status

        if not engine_status(workspace(args)).running:
            err.print(f"[yellow]note:[/] the engine is not running: {run.name} moves only once it is "
                      "(tunebench engine start)")

    def told(current) -> None:
        if not args.quiet and current.state in ("queued", "running"):
            err.print(f"[dim]{current.id} ({current.name}) {current.state}, step {current.step}/"
                      f"{current.total_steps or '?'}[/]")

    run = wait_for_run(store, run.id, timeout=args.timeout, poll=args.poll, on_change=told)
    code = wait_code(run)
    if args.json:
        print_json(run_json(run))
    elif not args.quiet:
        if run.state in ("queued", "running"):
            err.print(f"{run.id} ({run.name}) is still {run.state} after {fmt.duration(args.timeout)}")
        else:
            line = f"{run.id} ({run.name}) {run.state}"
            if run.error:
                line += f": {run.error.splitlines()[0]}"
            console().print(line, highlight=False, markup=False)
    return code


def _metrics(args: argparse.Namespace) -> int:
    from jobs.export import metrics_csv, metrics_json

    store = _store(args)
    run = store.resolve_run(args.run)
    if args.json:
        import json

        text = json.dumps(metrics_json(store, run), indent=1, ensure_ascii=False) + "\n"
    else:
        text = metrics_csv(store, run.id)
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        console(stderr=True).print(f"[dim]wrote {args.output}[/]")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
