"""`tunebench store check | rebuild`: is the run store sound, and rebuild it from the run folders.

Neither opens the store the way the other verbs do (that refuses a damaged or lost store): check
reads it read-only, rebuild reads the run folders (jobs/rebuild.py).
"""

from __future__ import annotations

import argparse

from tui.commands.common import console, workspace


def register(subparsers) -> None:
    store = subparsers.add_parser("store", help="check the run store, or rebuild it from the run folders")
    actions = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="integrity, schema version, and which runs the store and runs/ disagree on")
    check.add_argument("--full", action="store_true", help="a full integrity_check instead of quick_check (slower)")
    check.set_defaults(handler=_check)
    rebuild = actions.add_parser("rebuild", help="rebuild tunebench.db from runs/ (the old file is kept aside)")
    rebuild.add_argument("--force", action="store_true", help="rebuild even a readable store that knows every run")
    rebuild.set_defaults(handler=_rebuild)


def _check(args: argparse.Namespace) -> int:
    from jobs.rebuild import check_store

    report = check_store(workspace(args), full=args.full)
    out = console()
    for line in report.lines():
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    if report.complete:
        out.print("[green]the store is sound and knows every run folder[/]")
        return 0
    out.print("[yellow]→ `tunebench store rebuild` rebuilds the run store from the run folders "
              "(the current file is kept aside)[/]")
    return 1


def _rebuild(args: argparse.Namespace) -> int:
    from jobs.rebuild import rebuild_store

    report = rebuild_store(workspace(args), force=args.force)
    out = console()
    for line in report.lines():
        out.print(line, highlight=False, soft_wrap=True, markup=False)
    return 0
