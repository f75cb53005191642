"""`tunebench samples RUN [--worst N] [--rose N] [--step S] [--json]`: the samples the model finds
hardest, and those whose loss rose most from the base model to the fine-tuned one (jobs.samples)."""

from __future__ import annotations

import argparse

from tui.commands.common import add_json_arg, console, print_json, print_table, workspace


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "samples", help="per-sample losses of a run: the hardest samples and those whose loss rose most since the base model"
    )
    parser.add_argument("run", help="run id, unique id prefix, or name")
    parser.add_argument("--worst", type=int, default=10, metavar="N", help="the N samples with the highest loss (default 10; 0 hides them)")
    parser.add_argument("--rose", type=int, default=10, metavar="N",
                        help="the N samples whose loss rose most from the base model (default 10; 0 hides them)")
    parser.add_argument("--step", type=int, metavar="S", help="the losses measured at this step (default: the last one)")
    add_json_arg(parser)
    parser.set_defaults(handler=_samples)


def _samples(args: argparse.Namespace) -> int:
    from jobs.samples import run_samples
    from jobs.store import open_store

    ws = workspace(args)
    view = run_samples(open_store(ws), ws, args.run, step=args.step, worst=max(args.worst, 0), rose=max(args.rose, 0))
    if args.json:
        print_json(view.to_dict())
        return 0
    from rich.table import Table
    from rich.text import Text

    out = console()
    out.print(Text.assemble(("per-sample losses of run ", "bold"), (view.run_id, "bold cyan"),
                            f" at step {view.step}: {view.samples} samples, mean {view.mean_loss:.4f}"
                            f"  (steps measured: {', '.join(map(str, view.steps))}; 0 = the base model)"))
    if args.worst:
        table = Table(title=f"hardest {len(view.worst)}", title_justify="left", box=None, header_style="bold", padding=(0, 1))
        for name, justify in (("sample", "left"), ("loss", "right"), ("base", "right"), ("tokens", "right"), ("text", "left")):
            table.add_column(name, justify=justify, overflow="fold" if name == "text" else "ellipsis")
        for row in view.worst:
            table.add_row(f"{row.split} {row.index}", f"{row.loss:.4f}", "—" if row.base_loss is None else f"{row.base_loss:.4f}",
                          str(row.tokens), _text(row))
        print_table(out, table)
    if args.rose:
        if not view.has_base:
            out.print(Text("no base-model losses (step 0) in this run: nothing to compare with", style="yellow"))
        else:
            table = Table(title=f"loss rose most since the base model ({len(view.rose)})", title_justify="left", box=None, header_style="bold", padding=(0, 1))
            for name, justify in (("sample", "left"), ("rise", "right"), ("base", "right"), ("now", "right"), ("text", "left")):
                table.add_column(name, justify=justify, overflow="fold" if name == "text" else "ellipsis")
            for row in view.rose:
                table.add_row(f"{row.split} {row.index}", Text(f"{row.rise:+.4f}", style="red" if row.rise > 0 else "green"),
                              f"{row.base_loss:.4f}", f"{row.loss:.4f}", _text(row))
            print_table(out, table)
    return 0


def _text(row) -> str:
    return f"{row.preview}  ⟶ {row.answer}" if row.answer and row.answer not in row.preview else row.preview
