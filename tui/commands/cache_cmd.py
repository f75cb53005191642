"""`tunebench cache ls | clear [KEY]`: the prepared (tokenised, Arrow) datasets in the workspace.

Every run, eval and `tunebench data` of the same data, tokenizer and settings loads the entry its
first preparation wrote (engine.data.cache); clearing one only costs the next preparation.
"""

from __future__ import annotations

import argparse

from tui.commands.common import CliError, console, print_table, workspace


def register(subparsers) -> None:
    cache = subparsers.add_parser("cache", help="list or clear the prepared datasets (workspace cache/)")
    actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="entries: what they hold, size, rows, last used")
    ls.set_defaults(handler=_ls)
    clear = actions.add_parser("clear", help="delete one entry (its key or a prefix of it), or all of them")
    clear.add_argument("key", nargs="?", help="the entry's key as `cache ls` shows it (default: every entry)")
    clear.set_defaults(handler=_clear)


def _ls(args: argparse.Namespace) -> int:
    import time

    from rich.table import Table

    from engine.artifacts import human_bytes
    from engine.data.cache import list_entries

    ws = workspace(args)
    entries = list_entries(ws.cache_dir)
    out = console()
    if not entries:
        out.print(f"no prepared datasets in {ws.cache_dir}")
        return 0
    table = Table(box=None, padding=(0, 2))
    for column in ("key", "files", "tokenizer", "max_length", "rows", "size", "last used"):
        table.add_column(column, justify="right" if column in ("max_length", "rows", "size") else "left")
    for entry in entries:
        summary = entry.summary
        files = ", ".join(summary.get("files", []))
        if summary.get("val_files"):
            files += f" (validation: {', '.join(summary['val_files'])})"
        rows = f"{entry.rows:,}" + (f" + {entry.eval_rows:,}" if entry.eval_rows else "")
        table.add_row(entry.key, files, str(summary.get("tokenizer", "")), str(summary.get("max_length", "")), rows,
                      human_bytes(entry.size), time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used)))
    print_table(out, table)
    total = sum(e.size for e in entries)
    out.print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {human_bytes(total)} in {ws.cache_dir}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from engine.artifacts import human_bytes
    from engine.data.cache import clear, list_entries

    ws = workspace(args)
    freed = sum(e.size for e in list_entries(ws.cache_dir) if args.key is None or e.key.startswith(args.key))
    try:
        removed = clear(ws.cache_dir, args.key)
    except KeyError as exc:
        raise CliError(f"no single cache entry matches {exc.args[0]}",
                       "`tunebench cache ls` lists the keys; give one of them (or a longer prefix)") from None
    console().print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'} ({human_bytes(freed)})")
    return 0
