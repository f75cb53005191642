"""`tunebench checkpoints | eval | merge | export`: a run's checkpoints, and what to do with them.

    tunebench checkpoints RUN                       table: step, train/eval loss, size, age, best/keep
    tunebench checkpoints RUN --keep STEP           (--unkeep STEP, --delete STEP [--yes], --repair)
    tunebench eval RUN [--checkpoint STEP] [--samples N] [--data FILE]    queue an eval job
    tunebench eval PRESET                           queue an eval preset (kind: eval)
    tunebench merge RUN [--checkpoint STEP] [--dtype bf16|fp16|fp32]      queue an adapter merge
    tunebench merge PRESET                          queue a merge preset (kind: merge), or a mergekit YAML as it is
    tunebench export RUN [--checkpoint STEP] DIR    copy the adapter / model + tokenizer

Nothing here imports torch (export of an adapter saved without its tokenizer loads the base's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tui.commands.common import CliError, add_json_arg, confirm, console, print_json, print_table, run_json, workspace

FINAL_STATES = ("completed", "failed", "cancelled", "interrupted")


def register(subparsers) -> None:
    checkpoints = subparsers.add_parser("checkpoints", help="list a run's checkpoints; keep, unkeep or delete one")
    checkpoints.add_argument("run", help="run id, unique id prefix, or name")
    action = checkpoints.add_mutually_exclusive_group()
    action.add_argument("--keep", type=int, metavar="STEP", help="mark a checkpoint keep (the keep policy never prunes it)")
    action.add_argument("--unkeep", type=int, metavar="STEP", help="remove the keep mark")
    action.add_argument("--delete", type=int, metavar="STEP", help="delete a checkpoint (folder and record)")
    action.add_argument("--repair", action="store_true", help="bring records and folders back into agreement after a crash")
    checkpoints.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    add_json_arg(checkpoints)
    checkpoints.set_defaults(handler=_checkpoints)

    evaluate = subparsers.add_parser("eval", help="queue an eval job: a run's checkpoint against its base, or an eval preset")
    evaluate.add_argument("target", help="run id / prefix / name, or an eval preset (name or YAML path)")
    evaluate.add_argument("--checkpoint", type=int, metavar="STEP", help="evaluate this checkpoint (default: the final result)")
    evaluate.add_argument("--samples", type=int, metavar="N", help="answers generated for the generation metrics (default 50)")
    evaluate.add_argument("--max-new-tokens", type=int, metavar="N", help="generation length (default 64)")
    evaluate.add_argument("--data", metavar="FILE", help="evaluate on every row of this file instead of the validation split")
    evaluate.add_argument("--no-base", action="store_true", help="do not evaluate the base model alongside")
    _add_queue_args(evaluate)
    evaluate.set_defaults(handler=_eval)

    merge = subparsers.add_parser("merge", help="queue a merge job: fold a run's adapter into its base, or a merge preset")
    merge.add_argument("target", help="run id / prefix / name, a merge preset (name or YAML path), or a mergekit YAML")
    merge.add_argument("--checkpoint", type=int, metavar="STEP", help="merge this checkpoint's adapter (default: the final one)")
    merge.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="dtype of the saved model (default bf16)")
    merge.add_argument("--output", metavar="DIR", help="where the merged model goes (default runs/<id>/merged/<merge run id>/)")
    _add_queue_args(merge)
    merge.set_defaults(handler=_merge)

    export = subparsers.add_parser("export", help="copy a run's adapter or model (with tokenizer) to a folder")
    export.add_argument("run", help="run id, unique id prefix, or name")
    export.add_argument("dir", help="destination folder (new or empty)")
    export.add_argument("--checkpoint", type=int, metavar="STEP", help="export this checkpoint (default: the final result)")
    export.set_defaults(handler=_export)


def _add_queue_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a field of the queued preset, e.g. --set batch_size=4 (repeatable)",
    )
    parser.add_argument("--name", help="name of the queued run")
    parser.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    parser.add_argument("--no-engine", action="store_true", help="only queue it; do not start the engine")
    parser.add_argument("--wait", action="store_true", help="wait for the job to end and print its outcome")
    add_json_arg(parser)


def _context(args):
    from jobs.store import open_store

    ws = workspace(args)
    return ws, open_store(ws)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_table(infos, title: str | None = None):
    from rich.table import Table

    from tui.format import duration, number, size

    table = Table("step", "train loss", "eval loss", "size", "age", "", title=title)
    for info in infos:
        marks = []
        if info.best:
            marks.append("[bold green]★ best[/]")
        if info.keep:
            marks.append("[cyan]keep[/]")
        if info.latest:
            marks.append("[dim]latest[/]")
        if not info.on_disk:
            marks.append("[red]missing on disk[/]")
        table.add_row(str(info.step), number(info.train_loss), number(info.eval_loss), size(info.size_bytes),
                      duration(info.age_s), " ".join(marks))
    return table


def _checkpoints(args: argparse.Namespace) -> int:
    from jobs import checkpoints as ckpt

    ws, store = _context(args)
    out = console()
    run = store.resolve_run(args.run)
    if args.repair:
        done = ckpt.repair_checkpoints(store, ws, [run.id])
        out.print("\n".join(done) if done else "nothing to repair: records and folders agree")
        return 0
    if args.keep is not None or args.unkeep is not None:
        step = args.keep if args.keep is not None else args.unkeep
        info = ckpt.set_keep(store, ws, run.id, step, args.keep is not None)
        out.print(f"checkpoint {step} of {run.id}: {'kept' if info.keep else 'no longer kept'}")
        return 0
    if args.delete is not None:
        info = ckpt.find_checkpoint(store, ws, run.id, args.delete)
        if not confirm(f"delete checkpoint {info.step} of {run.id} ({info.path})?", args.yes):
            out.print("not deleted")
            return 1
        if info.protected and not confirm(
            f"checkpoint {info.step} is {' and '.join(w for w, on in (('the best', info.best), ('kept', info.keep)) if on)}; really delete it?",
            args.yes,
        ):
            out.print("not deleted")
            return 1
        ckpt.delete_checkpoint(store, ws, run.id, info.step)
        out.print(f"deleted checkpoint {info.step} of {run.id}")
        return 0
    infos = ckpt.list_checkpoints(store, ws, run.id)
    if args.json:
        print_json({"run": run.id, "name": run.name, "state": run.state, "checkpoints": [checkpoint_json(i) for i in infos]})
        return 0
    if not infos:
        out.print(f"run {run.id} ({run.name}, {run.state}) has no checkpoints")
        return 0
    print_table(out, checkpoint_table(infos, title=f"{run.id} · {run.name} · {run.state}"))
    return 0


def checkpoint_json(info) -> dict:
    return {"step": info.step, "path": str(info.path), "train_loss": info.train_loss, "eval_loss": info.eval_loss,
            "size_bytes": info.size_bytes, "created_at": info.created_at, "best": info.best, "keep": info.keep,
            "latest": info.latest, "on_disk": info.on_disk}


# --------------------------------------------------------------------------- eval / merge


def _target_run(store, ref: str):
    """The training run `ref` names, or None when it names no run (then it is a preset)."""
    from jobs.store import RunNotFound

    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        return None
    try:
        run = store.resolve_run(ref)
    except RunNotFound:
        return None
    return run if run.kind == "train" else None


def _load_kind(args, kind: str):
    from presets import load_preset

    preset = load_preset(args.target, workspace(args).root, args.overrides)
    if preset.kind != kind:
        raise CliError(
            f"{args.target}: no training run has this name, and it is a {preset.kind} preset; "
            f"`tunebench {kind}` takes a run or a {kind} preset"
        )
    return preset


def _with_overrides(preset, overrides: list[str]):
    if not overrides:
        return preset
    from presets import dump_preset, load_preset_text

    return load_preset_text(dump_preset(preset), preset.name, overrides)


def _queue(args, preset) -> int:
    from jobs import control

    ws = workspace(args)
    run = control.submit(ws, preset, name=args.name, priority=args.priority, start=not args.no_engine)
    out = console(stderr=args.json)
    out.print(f"queued {run.kind} run [bold]{run.id}[/] ({run.name})")
    if not args.wait:
        out.print(f"[dim]follow it: tunebench logs -f {run.id}   ·   tunebench show {run.id}[/]")
        if args.json:
            print_json({"run": run_json(run), "results": None})
        return 0
    return _wait(args, run.id)


def _wait(args, run_id: str) -> int:
    from jobs.store import open_store

    store = open_store(workspace(args))
    out = console(stderr=args.json)
    while True:
        run = store.get_run(run_id)
        if run is None or run.state in FINAL_STATES:
            break
        time.sleep(0.5)
    if run is None:
        raise CliError(f"run {run_id} was removed while waiting")
    if run.state != "completed":
        raise CliError(f"run {run.id} ended {run.state}" + (f": {run.error}" if run.error else ""), run.advice)
    out_dir = run.info.get("out_dir")
    if args.json:
        # the job's results: engine.evaluate's results.json for an eval, the merge summary for a merge
        results_file = Path(out_dir) / "results.json" if out_dir and run.kind == "eval" else None
        results = json.loads(results_file.read_text(encoding="utf-8")) if results_file and results_file.is_file() else run.info.get("result")
        print_json({"run": run_json(run), "results": results})
        return 0
    if run.kind == "eval" and out_dir and (Path(out_dir) / "results.md").is_file():
        out.print((Path(out_dir) / "results.md").read_text(encoding="utf-8"), markup=False)
    else:
        out.print(f"run {run.id} completed" + (f": {out_dir}" if out_dir else ""))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from jobs import targets

    ws, store = _context(args)
    run = _target_run(store, args.target)
    if run is None:
        preset = _load_kind(args, "eval")
        flags = [f for f, v in (("--checkpoint", args.checkpoint), ("--samples", args.samples), ("--data", args.data)) if v is not None]
        if flags:
            raise CliError(f"{', '.join(flags)} apply to `tunebench eval RUN`; in a preset, set the fields (or --set)")
        return _queue(args, preset)
    preset = targets.eval_preset_for_run(
        store, ws, run.id, checkpoint=args.checkpoint, samples=args.samples, data_file=args.data,
        max_new_tokens=args.max_new_tokens, compare_base=not args.no_base,
    )
    return _queue(args, _with_overrides(preset, args.overrides))


def _merge(args: argparse.Namespace) -> int:
    from jobs import targets

    ws, store = _context(args)
    run = _target_run(store, args.target)
    if run is None:
        preset = _mergekit_file(args) or _load_kind(args, "merge")
        if args.checkpoint is not None:
            raise CliError("--checkpoint applies to `tunebench merge RUN`; in a preset, set checkpoint:")
        updates = {k: v for k, v in (("dtype", args.dtype), ("output", args.output)) if v}
        return _queue(args, preset.model_copy(update=updates) if updates else preset)
    preset = targets.merge_preset_for_run(store, ws, run.id, checkpoint=args.checkpoint, dtype=args.dtype, output=args.output)
    return _queue(args, _with_overrides(preset, args.overrides))


def _mergekit_file(args):
    """The merge preset of a mergekit YAML named on the command line, taken as it is; else None."""
    from presets.importers import MERGEKIT, detect_tool, import_config
    from presets.loader import parse_yaml, read_text

    path = Path(args.target).expanduser()
    if not (args.target.endswith((".yaml", ".yml")) and path.is_file()):
        return None
    if detect_tool(parse_yaml(read_text(path), str(path))) != MERGEKIT:
        return None
    return _with_overrides(import_config(path).preset, args.overrides)


# --------------------------------------------------------------------------- export


def _export(args: argparse.Namespace) -> int:
    from jobs import checkpoints as ckpt
    from jobs import targets

    ws, store = _context(args)
    target = targets.run_target(store, ws, args.run, args.checkpoint)
    copied = ckpt.export_weights(target.weights_dir, Path(args.dir), base_model=target.base_model.path)
    what = "adapter" if target.is_adapter else "model"
    source = f"checkpoint {target.checkpoint}" if target.checkpoint is not None else "final result"
    out = console()
    out.print(f"exported the {what} of {target.run.id} ({source}) to {Path(args.dir).expanduser().resolve()}: {', '.join(copied)}")
    if target.is_adapter:
        out.print(f"[dim]it loads on its base {target.base_model.path} (peft.PeftModel.from_pretrained); "
                  f"`tunebench merge {target.run.id}` makes a standalone model[/]")
    return 0
