"""Helpers shared by the CLI verbs: workspace, console, errors."""

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
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


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
