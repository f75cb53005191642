"""Helpers shared by the CLI verbs: workspace, console, tables, --json output, errors."""

from __future__ import annotations

import argparse
import sys

from presets.errors import TunebenchError


class CliError(TunebenchError):
    """A command that cannot do what its arguments ask; printed like every TunebenchError."""

    def __init__(self, message: str, advice: str | None = None, exit_code: int = 2):
        super().__init__(message, advice)
        self.exit_code = exit_code


def console(stderr: bool = False):
    """Rich's console: colour only on a terminal, none under NO_COLOR (Rich reads it)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def print_table(out, table) -> None:
    """A table on a terminal fits its width; piped or redirected, it is printed at its natural width,
    so no cell is ever cut ("comple…") for a script or a file to read."""
    if out.is_terminal:
        out.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(out, out.options.update(width=1 << 16), table).maximum
    previous = out.width  # print(width=) is capped at the console's width: widen the console itself
    out.width = max(previous, natural)
    try:
        out.print(table)
    finally:
        out.width = previous


# --json: the shapes are the README's ("Output for scripts"); keep them stable, add keys only.


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout (the README documents its shape); notices go to stderr")


def print_json(data) -> None:
    """`data` as JSON, alone on stdout."""
    import json

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def run_json(run) -> dict:
    """A run as --json shows it (ls, show, queued jobs)."""
    return {
        "id": run.id, "name": run.name, "kind": run.kind, "state": run.state, "priority": run.priority,
        "step": run.step, "total_steps": run.total_steps, "progress": run.progress,
        "last_loss": run.last_loss, "best_eval_loss": run.best_eval_loss, "best_eval_step": run.best_eval_step,
        "findings": run.findings, "attempt": run.attempt, "gpu": run.gpu,
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
        "running_s": run.running_time(), "parent_run": run.parent_run, "parent_checkpoint": run.parent_checkpoint,
        "dry_run": run.dry_run, "error": run.error, "advice": run.advice, "tags": run.tags, "note": run.note,
    }


def workspace(args: argparse.Namespace):
    from jobs.workspace import resolve_workspace

    return resolve_workspace(getattr(args, "workspace", None))


def add_preset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preset", help="preset name (built-in or in the workspace) or YAML path")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a preset field, e.g. --set training.lr=1e-4 (repeatable)",
    )


def load_preset_from_args(args: argparse.Namespace, kind: str | None = None):
    """Load the preset named on the command line with its --set overrides; CliError on problems."""
    from presets import load_preset

    preset = load_preset(args.preset, workspace(args).root, args.overrides)
    if kind is not None and preset.kind != kind:
        raise CliError(f"{args.preset}: this is a {preset.kind} preset; this command takes a {kind} preset")
    return preset


def confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise CliError(f"{question} — not a terminal: pass --yes to confirm")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
