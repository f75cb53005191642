"""`tunebench compare | tag | note`: runs side by side, and the labels that help find them again.

The figures and the settings diff come from jobs/compare.py, which the Compare screen reads too.
"""

from __future__ import annotations

import argparse

from tui import format as fmt
from tui.commands.common import add_json_arg, console, print_json, print_table, workspace


def register(subparsers) -> None:
    compare = subparsers.add_parser("compare", help="2 to 6 runs side by side: settings that differ, final and best figures")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run ids, unique id prefixes, or names (2 to 6)")
    compare.add_argument("--metric", help="with --json: add this metric's series of each run (e.g. loss, eval_loss)")
    compare.add_argument("--align", choices=("step", "tokens", "time"), default="step",
                         help="the series' x axis: step, tokens seen or running time (default step)")
    compare.add_argument("--points", type=int, default=400, help="with --metric: at most about this many points a run")
    add_json_arg(compare)
    compare.set_defaults(handler=_compare)

    tag = subparsers.add_parser("tag", help="add (or with --remove, take off) tags of a run; none given: list them")
    tag.add_argument("run", help="run id, unique id prefix, or name")
    tag.add_argument("tags", nargs="*", metavar="TAG", help="one word each: letters, digits and . _ : + -")
    tag.add_argument("--remove", "-r", action="store_true", help="take these tags off instead")
    add_json_arg(tag)
    tag.set_defaults(handler=_tag)

    note = subparsers.add_parser("note", help="set a run's note (one line); none given: print it")
    note.add_argument("run", help="run id, unique id prefix, or name")
    note.add_argument("text", nargs="*", help="the note (words are joined by spaces)")
    note.add_argument("--clear", action="store_true", help="remove the note")
    add_json_arg(note)
    note.set_defaults(handler=_note)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape  # imported when a verb runs, not when the CLI starts

    return rich_escape(text)


def _store(args):
    from jobs.store import open_store

    return open_store(workspace(args))


def _compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from jobs import compare as cmp

    store = _store(args)
    runs = cmp.resolve_runs(store, args.runs)
    comparison = cmp.compare(store, runs)
    if args.json:
        data = comparison.as_json()
        if args.metric:
            lines = cmp.load_lines(store, runs, args.metric, align=args.align, max_points=args.points)
            data["series"] = {"metric": args.metric, "align": args.align,
                              "runs": {line.run_id: {"x": line.xs, "y": line.ys, "rows": line.rows, "note": line.note}
                                       for line in lines}}
        print_json(data)
        return 0
    out = console()
    head = Table(box=None, header_style="bold")
    for column in ("id", "name", "state", "step", "took", "tags", "note"):
        head.add_column(column, no_wrap=column != "note")
    for figures in comparison.figures:
        step = f"{figures.step}/{figures.total_steps}" if figures.total_steps else str(figures.step)
        head.add_row(figures.run_id, escape(figures.name), figures.state, step, fmt.duration(figures.running_s),
                     " ".join(figures.tags), escape(figures.note))
    print_table(out, head)

    names = [escape(run.name) for run in runs]
    out.print()
    if comparison.differences:
        diff = Table(box=None, header_style="bold", title="settings that differ", title_justify="left")
        diff.add_column("setting", no_wrap=True)
        for name in names:
            diff.add_column(name)
        for key, values in comparison.differences:
            diff.add_row(escape(key), *(escape(cmp.setting_text(value)) for value in values))
        print_table(out, diff)
    else:
        out.print("[dim]the frozen presets agree on every setting[/]")

    metrics = [m for m in cmp.FIGURE_METRICS if any(m in f.figures for f in comparison.figures)]
    out.print()
    if metrics:
        figures = Table(box=None, header_style="bold", title="final / best (step)", title_justify="left")
        figures.add_column("metric", no_wrap=True)
        for name in names:
            figures.add_column(name, justify="right", no_wrap=True)
        for metric in metrics:
            figures.add_row(metric, *(figure_text(f.figures.get(metric)) for f in comparison.figures))
        print_table(out, figures)
    else:
        out.print("[dim]no metrics recorded yet[/]")
    return 0


def figure_text(figure) -> str:
    if figure is None:
        return "—"
    final = fmt.number(figure.final)
    if figure.best is None or figure.best == figure.final:
        return final
    return f"{final} / {fmt.number(figure.best)} ({figure.best_step})"


def _tag(args: argparse.Namespace) -> int:
    store = _store(args)
    run = store.resolve_run(args.run)
    if args.tags:
        run = store.set_labels(run.id, **({"remove": args.tags} if args.remove else {"add": args.tags}))
    if args.json:
        print_json({"id": run.id, "name": run.name, "tags": run.tags})
    else:
        console().print(f"{run.name}: {' '.join(run.tags) if run.tags else '[dim]no tags[/]'}")
    return 0


def _note(args: argparse.Namespace) -> int:
    store = _store(args)
    run = store.resolve_run(args.run)
    if args.clear or args.text:
        run = store.set_labels(run.id, note="" if args.clear else " ".join(args.text))
    if args.json:
        print_json({"id": run.id, "name": run.name, "note": run.note})
    else:
        console().print(f"{escape(run.name)}: {escape(run.note) if run.note else '[dim]no note[/]'}")
    return 0
