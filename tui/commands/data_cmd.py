"""`tunebench data PRESET`: what the training data looks like once loaded, rendered and masked."""

from __future__ import annotations

import argparse

from tui.commands.common import add_preset_args, console, load_preset_from_args, print_table, workspace

EXAMPLE_TOKENS = 600  # the rendered example is cut after this many tokens
HISTOGRAM_WIDTH = 40


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="load a train preset's data and report on it (formats, drops, lengths, label mask; "
        "pairs for the preference stages)"
    )
    add_preset_args(parser)
    # Also after the verb (`tunebench data demo -w ws`); SUPPRESS keeps the global value when absent.
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.set_defaults(handler=_data)


def _data(args: argparse.Namespace) -> int:
    import logging

    from presets import resolve_paths

    # The report lists the pipeline's warnings; without a handler Python would print them twice.
    logging.getLogger("tunebench.data").addHandler(logging.NullHandler())

    ws = workspace(args)
    preset = resolve_paths(load_preset_from_args(args, kind="train"), ws.root)
    from engine.data import build_datasets
    from engine.models import load_tokenizer

    tokenizer = load_tokenizer(preset.model)
    out = console()
    from presets.stages import STAGES

    if STAGES[preset.stage].is_preference:
        return _preference(args, preset, tokenizer, out)
    # The seed and the cache are the run's: a later `train` or `submit` of this preset loads these rows.
    with _preparing(console(stderr=True)) as progress:
        bundle = build_datasets(preset.data, tokenizer, seed=preset.data.shuffle_seed, cache_dir=ws.cache_dir,
                                progress=progress)  # DataError names the file, line or key
    report = bundle.report
    if args.json:
        _write_json(report.to_dict())
        return 0
    _print_report(out, preset.name, report, preset.training.batch_size)
    out.print(f"\n  cache: {'hit' if bundle.cache_hit else 'prepared'} {bundle.cache_key} (`tunebench cache ls`)")
    return 0


def _preference(args: argparse.Namespace, preset, tokenizer, out) -> int:
    """The pair report of a preference stage (dpo, orpo, simpo, kto)."""
    from rich.text import Text

    from engine.data import build_preference_datasets

    with _preparing(console(stderr=True)) as progress:
        bundle = build_preference_datasets(preset, tokenizer, seed=preset.data.shuffle_seed, progress=progress)
    report = bundle.report
    if args.json:
        _write_json(report.to_dict())
        return 0
    out.print(Text.assemble(("data of preset ", "bold"), (preset.name, "bold cyan")))
    for line in report.lines():
        out.print(Text("  " + line, style="yellow" if line.startswith("warning:") else ""))
    return 0


def _write_json(data: dict) -> None:
    import json
    import sys

    # Plain stdout: Rich would wrap long lines, and JSON strings cannot hold raw newlines.
    sys.stdout.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


class _preparing:
    """A progress bar with rows/s and ETA while the samples are tokenised (on stderr, gone when done)."""

    def __init__(self, err):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]preparing data[/]"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[rate]} rows/s  eta"), TimeRemainingColumn(),
                            console=err, transient=True)
        self.task = None
        self.started = 0.0

    def __enter__(self):
        import time

        self.bar.start()
        self.started = time.monotonic()
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        import time

        rate = f"{done / max(time.monotonic() - self.started, 1e-9):,.0f}"
        if self.task is None:
            self.task = self.bar.add_task("prepare", total=total, rate=rate)
        self.bar.update(self.task, completed=done, total=total, rate=rate)

    def __exit__(self, *exc):
        self.bar.stop()
        return False


def _share(value: float) -> str:
    return f"{value:.1%}"


def _print_report(out, name: str, report, batch_size: int) -> None:
    from rich.table import Table
    from rich.text import Text

    out.print(Text.assemble(("data of preset ", "bold"), (name, "bold cyan")))
    out.print(f"  files: {', '.join(report.files)}" + (f"  (validation: {', '.join(report.val_files)})" if report.val_files else ""))
    out.print(f"  format: [bold]{report.format}[/] — {report.format_detection}")
    if report.sampled:
        out.print(Text(f"  data.streaming: this report covers a sample, the first {report.sampled} training samples; "
                       "the run reads every row as it trains", style="yellow"))
    out.print(f"  chat template: {report.chat_template}" + ("" if report.assistant_only_loss else "  (loss on every token)"))
    for warning in report.warnings:
        out.print(Text("  warning: " + warning, style="yellow"))

    counts = Table(title="counts", title_justify="left", show_header=False, box=None, padding=(0, 2))
    counts.add_column(style="bold")
    counts.add_column(justify="right")
    counts.add_row("rows read", str(report.rows_read) + (f" (+{report.val_rows_read} validation)" if report.val_rows_read else ""))
    counts.add_row("training samples", str(report.train_samples))
    counts.add_row("validation samples", str(report.eval_samples))
    for reason, n in sorted(report.dropped.items(), key=lambda kv: -kv[1]):
        counts.add_row(Text(f"dropped: {reason}", style="red"), str(n))
    for reason, n in sorted(report.val_dropped.items(), key=lambda kv: -kv[1]):
        counts.add_row(Text(f"validation dropped: {reason}", style="red"), str(n))
    if report.limited:
        counts.add_row("left out by data.max_samples", str(report.limited))
    counts.add_row("truncated to max_length", f"{report.truncated} ({_share(report.truncated_share)}) at {report.max_length}")
    counts.add_row("tokens", f"{report.total_tokens:,}")
    counts.add_row("supervised tokens", f"{report.supervised_tokens:,} ({_share(report.supervised_share)})")
    active = "packing" if report.packing else "padding"
    counts.add_row(f"padding efficiency (batch {report.efficiency_batch_size})",
                   _share(report.padding_efficiency) + ("  ← in use" if active == "padding" else ""))
    counts.add_row(f"packing efficiency (batch {report.efficiency_batch_size})",
                   _share(report.packing_efficiency) + ("  ← in use" if active == "packing" else ""))
    counts.add_row("duplicate samples", str(report.duplicates))
    counts.add_row("validation rows also in training", str(report.train_val_overlap))
    if report.template_has_eos_after_assistant is not None:
        eos = report.template_has_eos_after_assistant
        counts.add_row("end-of-turn token after answers",
                       Text(f"yes ({report.end_of_turn_token})" if eos else "NO", style="green" if eos else "red"))
    print_table(out, counts)

    stats = report.length
    out.print(f"\n[bold]tokens per sample[/] (before truncation): min {stats.min}  median {stats.median}  "
              f"p95 {stats.p95}  max {stats.max}  mean {stats.mean:.0f}")
    top = max((b.count for b in report.histogram), default=0)
    for b in report.histogram:
        bar = "█" * (round(b.count / top * HISTOGRAM_WIDTH) if top else 0)
        style = "red" if b.lo >= report.max_length else "cyan"
        label = f"{b.lo:>6}" + (f"–{b.hi - 1:<6}" if b.hi - 1 > b.lo else " " * 7)
        out.print(Text.assemble(f"  {label} ", (bar, style), f" {b.count}"))
    if any(b.lo >= report.max_length for b in report.histogram):
        out.print(Text(f"  red: at or beyond max_length {report.max_length} (truncated)", style="red"))

    example = report.example
    if example is not None:
        out.print(Text.assemble(
            ("\nrendered example", "bold"), f" ({example.where}; ", ("supervised", "bold black on green"),
            ", ", ("not supervised", "dim"), ")" + (", truncated" if example.truncated else "") + ":"))
        highlight = {True: "bold black on green", False: "dim"}
        text = Text()
        if len(example.tokens) <= EXAMPLE_TOKENS:
            for segment, supervised in example.segments:
                text.append(segment, style=highlight[supervised])
        else:  # long samples would fill the screen: the first tokens only
            for token, supervised in zip(example.tokens[:EXAMPLE_TOKENS], example.supervised):
                text.append(token, style=highlight[supervised])
            text.append(f" … ({len(example.tokens) - EXAMPLE_TOKENS} more tokens)", style="italic")
        out.print(text)
