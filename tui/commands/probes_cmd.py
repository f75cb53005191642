"""`tunebench probes RUN`: each probe's answer at every checkpoint, with what changed since the one before.

    tunebench probes RUN                  per probe: step, changed mark, the answer (changes coloured)
    tunebench probes RUN --step STEP      one checkpoint's answers
    tunebench probes RUN --json           the timeline (README: Output for scripts)

The probes are a train preset's `probes:` (prompts, or a file); the engine answers them at every
save (engine/probes.py). Nothing here imports torch.
"""

from __future__ import annotations

import argparse

from tui.commands.common import CliError, add_json_arg, console, print_json, print_table, workspace

DIFF_STYLES = {"same": "", "added": "bold green", "removed": "red strike"}
MARKS = {"added": "{{+{}+}}", "removed": "[-{}-]"}


def register(subparsers) -> None:
    probes = subparsers.add_parser("probes", help="a run's probe answers at every checkpoint, changes highlighted")
    probes.add_argument("run", help="run id, unique id prefix, or name")
    probes.add_argument("--step", type=int, metavar="STEP", help="only this checkpoint's answers")
    add_json_arg(probes)
    probes.set_defaults(handler=_probes)


def diff_text(diff, *, colour: bool = True):
    """A word diff (jobs.probes.word_diff) as Rich text: added words bold green, removed ones struck
    out in red; without colour (a pipe, NO_COLOR) in wdiff's marks, {+added+} and [-removed-]."""
    from rich.text import Text

    from jobs.probes import printable

    text = Text()
    for kind, piece in diff:
        shown = printable(piece, one_line=True)
        if not colour and kind in MARKS:
            shown = MARKS[kind].format(shown)
        text.append(shown, style=DIFF_STYLES[kind] if colour else "")
    return text


def _probes(args: argparse.Namespace) -> int:
    from jobs.probes import probe_timeline
    from jobs.store import open_store

    ws = workspace(args)
    timeline = probe_timeline(open_store(ws), ws, args.run)
    if args.step is not None:
        row = timeline.checkpoint(args.step)
        if row is None:
            steps = ", ".join(str(c.step) for c in timeline.checkpoints) or "none yet"
            raise CliError(f"run {timeline.run_id} has no probe answers at step {args.step}", f"steps with answers: {steps}")
        timeline.checkpoints = [row]
    if args.json:
        print_json(timeline.to_json())
        return 0
    out = console()
    cost = timeline.cost_per_save()
    head = f"{timeline.run_id} · {timeline.name} · {timeline.state} · {len(timeline.prompts)} probe(s)"
    if cost is not None:
        head += f" · probing adds {cost:.2f} s per save (median)"
    out.print(head, highlight=False, soft_wrap=True)
    if timeline.note:
        out.print(timeline.note)
        return 0
    from rich.table import Table

    from jobs.probes import printable

    for index, prompt in enumerate(timeline.prompts):
        table = Table("step", "Δ", "answer", title=f"#{index + 1} {printable(prompt, one_line=True)}", title_justify="left")
        for row in timeline.checkpoints:
            answer = row.answers[index]
            if answer is None:
                table.add_row(str(row.step), "", "—")
                continue
            mark = "[bold yellow]≠[/]" if answer.changed else ""
            table.add_row(str(row.step) + ("" if row.on_disk else " (removed)"), mark, diff_text(answer.diff, colour=out.color_system is not None))
        print_table(out, table)
    return 0
