"""`tunebench train PRESET` (in-process, with a progress bar) and `tunebench make-tiny-model DIR`.

For scripts and debugging: the run happens in this process, without the queue or the store. The
run folder is --output, or a new folder under the workspace's runs/.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from tui.commands.common import CliError, add_preset_args, console, load_preset_from_args, workspace


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a preset in this process, with a progress bar")
    add_preset_args(train)
    train.add_argument("--output", "-o", metavar="DIR", help="run folder (default: <workspace>/runs/<preset>-<time>)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="resume from a checkpoint folder (or a run folder: its latest checkpoint)")
    train.set_defaults(handler=_train)

    tiny = subparsers.add_parser("make-tiny-model", help="write the tiny offline Llama model + tokenizer used by tests and the demo")
    tiny.add_argument("dir", help="output directory")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(handler=_make_tiny_model)


def console_sink(out, progress):
    """A Sink that drives a Rich progress bar (step/total, ETA, loss, tokens/s) and prints events,
    checkpoints and findings above it. Built here because tui imports engine only inside functions."""
    from engine.sink import Sink, format_figure

    class ConsoleSink(Sink):
        def __init__(self, out, progress):
            self.out = out
            self.progress = progress
            self.task = None
            self.status = {"loss": "-", "tok_s": "-", "eval": ""}
            self.stop_reason = None

        def should_stop(self):
            return self.stop_reason

        def interrupt(self, signum, frame):
            """First Ctrl-C: stop at the next step with a checkpoint (resumable); second: abort now."""
            if self.stop_reason is not None:
                raise KeyboardInterrupt
            self.stop_reason = "interrupt"
            self.out.print("[yellow]stopping after this step with a checkpoint (Ctrl-C again to abort)[/]")

        def _refresh(self, step=None, total=None):
            if self.task is None:
                return
            fields = dict(loss=self.status["loss"], tok_s=self.status["tok_s"], eval=self.status["eval"])
            kwargs = {"completed": step} if step is not None else {}
            if total is not None:
                kwargs["total"] = total
            self.progress.update(self.task, **kwargs, **fields)

        def run_started(self, info):
            p = info.get("trainable_params", 0)
            t = info.get("total_params", 0) or 1
            self.out.print(
                f"[bold]{info.get('method')}[/] on {info.get('device')} ({info.get('precision')}): "
                f"{p:,} trainable of {t:,} parameters ({100 * p / t:.4f}%), "
                f"{info.get('train_samples')} training / {info.get('eval_samples')} validation samples"
            )
            self.task = self.progress.add_task("train", total=info.get("total_steps"), completed=info.get("start_step", 0), loss="-", tok_s="-", eval="")

        def metrics(self, step, values):
            if "loss" in values:
                self.status["loss"] = format_figure(values["loss"])
            if "tokens_per_s" in values:
                self.status["tok_s"] = f"{values['tokens_per_s']:,.0f}"
            if "eval_loss" in values:
                self.status["eval"] = f"eval {format_figure(values['eval_loss'])}"
                self.out.print(f"step {step}: eval_loss {format_figure(values['eval_loss'])}  ppl {format_figure(values['eval_ppl'])}")
            self._refresh(step)

        def event(self, level, text, step=None):
            style = {"error": "red", "warning": "yellow"}.get(level, "dim")
            self.out.print(f"[{style}]{text}[/]", markup=True, highlight=False)

        def checkpoint(self, step, path, metrics):
            self.out.print(f"[dim]checkpoint {step}: {path}[/]")

        def checkpoint_removed(self, step, path):
            self.out.print(f"[dim]pruned checkpoint {step}[/]")

        def finding(self, finding):
            style = {"error": "red", "warning": "yellow"}.get(finding.get("severity"), "cyan")
            self.out.print(f"[{style}]doctor ({finding.get('rule')}): {finding.get('title')}[/] — {finding.get('advice')}")

    return ConsoleSink(out, progress)


def _progress(out):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]}  {task.fields[tok_s]} tok/s  {task.fields[eval]}"),
        console=out,
        transient=False,
    )


def _run_dir(args: argparse.Namespace, preset_name: str) -> Path:
    if args.output:
        output = Path(args.output).expanduser().resolve()
        if output.exists() and not output.is_dir():
            raise CliError(f"--output {output} is a file, not a folder",
                           "give a new or existing folder for the run (its checkpoints and result go there)")
        return output
    if args.resume:  # carry on in the run the checkpoint belongs to
        resume = Path(args.resume).expanduser().resolve()
        if resume.parent.name == "checkpoints":
            return resume.parent.parent
        if (resume / "checkpoints").is_dir():
            return resume
    from presets import check_name

    # The preset's `name:` becomes a folder name here, so it must not step out of runs/.
    check_name(preset_name, "preset name (its name: key, used for the run folder)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return workspace(args).runs_dir / f"{preset_name}-{stamp}"


def _train(args: argparse.Namespace) -> int:
    from presets import resolve_paths

    preset = load_preset_from_args(args, kind="train")
    ws = workspace(args)
    preset = resolve_paths(preset, ws.root)
    if preset.model.start_from and not Path(preset.model.start_from).is_dir():
        from jobs.targets import resolve_train_preset

        preset = resolve_train_preset(preset, ws)  # a run id of this workspace: its result folder
    run_dir = _run_dir(args, preset.name)

    from engine.train import train

    out = console()
    out.print(f"run folder: {run_dir}")
    with _progress(out) as progress:
        sink = console_sink(out, progress)
        previous = signal.signal(signal.SIGINT, sink.interrupt) if threading.current_thread() is threading.main_thread() else None
        try:
            result = train(preset, run_dir, sink, resume_from=args.resume)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            sink.close()
    if result.status == "completed" or result.final_dir is not None:
        best = f", best eval loss {result.best_eval_loss:.4f} ({result.best_checkpoint.name})" if result.best_eval_loss is not None else ""
        out.print(f"[green]{result.status}[/]: {result.global_step} steps in {result.runtime_s:.1f} s{best}; result in {result.final_dir}")
        return 0
    out.print(
        f"[yellow]{result.status}[/] ({result.stop_reason}) at step {result.global_step}; "
        f"resume with: tunebench train {args.preset} --resume {result.last_checkpoint}"
    )
    return 3 if result.status == "stopped" else 130


def _make_tiny_model(args: argparse.Namespace) -> int:
    from engine.tiny import make_tiny_model

    path = Path(args.dir).expanduser()
    if path.exists() and any(path.iterdir()):
        raise CliError(f"{path} exists and is not empty; pick a new directory")
    written = make_tiny_model(path, seed=args.seed)
    console().print(f"wrote the tiny model and tokenizer to {written}")
    return 0
