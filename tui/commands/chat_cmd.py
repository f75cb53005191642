"""`tunebench chat`: base and fine-tuned answers side by side, headless (for scripts).

    tunebench chat --run RUN [--checkpoint STEP] [--compare STEP] --prompt TEXT
    tunebench chat --run RUN --probe N            # N prompts of the run's validation split, scored
    tunebench chat --run RUN --prompts FILE       # a probe set from a file of prompts
    tunebench chat --base PATH --adapter PATH --prompt TEXT

Transcripts and probe results of a run are saved in the workspace: the store (transcripts table)
and runs/<id>/chat/. `chat_target` and `save_chat_record` are what the chat screen uses too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tui.commands.common import CliError, confirm, console, workspace

CHAT_DIR = "chat"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat", help="compare base and fine-tuned answers (one prompt, or a scored probe set)",
        description="Answer with the base model and the fine-tuned result side by side: same chat template, "
                    "system prompt and generation settings as training; greedy unless --temperature > 0.",
    )
    parser.add_argument("--workspace", "-w", default=argparse.SUPPRESS, help="workspace directory")
    what = parser.add_argument_group("what to compare")
    what.add_argument("--run", help="run id, id prefix or name: its base model and its final result")
    what.add_argument("--checkpoint", type=int, metavar="STEP", help="this checkpoint of the run instead of its final result")
    what.add_argument("--compare", metavar="STEP|base", default="base",
                      help="the left side: base (default) or another checkpoint step of the same run")
    what.add_argument("--base", metavar="PATH", help="base model folder (without --run)")
    what.add_argument("--adapter", metavar="PATH", help="adapter or fine-tuned model folder (without --run)")
    ask = parser.add_argument_group("what to ask")
    ask.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                     help="a user turn (repeat for a multi-turn conversation; each side keeps its own history)")
    ask.add_argument("--probe", type=int, metavar="N", help="score N prompts of the run's validation split")
    ask.add_argument("--prompts", metavar="FILE", help="probe set from a file (.txt lines, .jsonl/.json rows with prompt/instruction and reference/output)")
    ask.add_argument("--system", help="system prompt (default: the run's data.system_prompt)")
    ask.add_argument("--export", metavar="PATH", help="probe: also write PATH.jsonl and PATH.md")
    gen = parser.add_argument_group("generation (the same on both sides)")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0, help="0 = off")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 = off")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed, the same on both sides")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: the first GPU, else the CPU)")
    parser.add_argument("--yes", "-y", action="store_true", help="load a second full model without asking")
    parser.add_argument("--no-save", action="store_true", help="do not save the transcript in the workspace")
    parser.add_argument("--json", action="store_true", help="print the answers (or probe rows) as JSON")
    parser.set_defaults(handler=_chat)


# --------------------------------------------------------------------------- resolving what to compare


@dataclass
class ChatTarget:
    """Everything ChatSession.load needs, resolved from a run (or from --base/--adapter)."""

    base: str
    target: str | None
    compare_to: str | None = None
    run_id: str | None = None
    checkpoint: int | None = None
    model_config: object = None  # presets ModelConfig of the run
    data_config: object = None  # presets DataConfig of the run (validation split for probes)
    chat_template: str | None = None
    system_prompt: str | None = None
    labels: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        left = self.labels[0] if self.labels else "base"
        right = self.labels[1] if self.labels else "fine-tuned"
        where = f"run {self.run_id}" if self.run_id else self.base
        return f"{left} vs {right} ({where})"


def chat_target(ws, run_ref: str, *, checkpoint: int | None = None, compare: str | int | None = None) -> ChatTarget:
    """Resolve a run (id, prefix or name) into its base model, the result to compare and its chat
    settings (jobs.targets does the run → paths part). `checkpoint`: a step instead of the final
    result; `compare`: a step for the left side (two checkpoints of one run) instead of the base.
    A run with no final result yet (still training) falls back to its latest checkpoint."""
    from jobs.store import open_store
    from jobs.targets import TargetError, checkpoint_dirs, run_target

    store = open_store(ws)
    notes = []
    try:
        try:
            right = run_target(store, ws, run_ref, checkpoint)
        except TargetError:
            if checkpoint is not None:
                raise
            run = store.resolve_run(run_ref)
            steps = checkpoint_dirs(store, ws, run.id)
            if not steps:
                raise TargetError(f"run {run.id} ({run.state}) has no final result and no checkpoint yet; wait for its first checkpoint") from None
            right = run_target(store, ws, run.id, max(steps))
            notes.append(f"run {run.id} has no final result ({run.state}): using its latest checkpoint, step {right.checkpoint}")
        left = None
        if compare not in (None, "base", ""):
            try:
                step = int(compare)
            except (TypeError, ValueError):
                raise TargetError(f"--compare {compare!r}: give base or a checkpoint step") from None
            left = run_target(store, ws, right.run.id, step)
    except (TargetError, KeyError) as exc:
        raise CliError(str(exc).strip('"')) from None
    if right.run.kind != "train":
        raise CliError(f"run {right.run.id} is a {right.run.kind} run; chat compares the result of a train run")
    label = lambda target: "fine-tuned" if target.checkpoint is None else f"checkpoint-{target.checkpoint}"  # noqa: E731
    preset = right.train_preset
    return ChatTarget(
        base=preset.model.path, target=str(right.weights_dir), compare_to=str(left.weights_dir) if left else None,
        run_id=right.run.id, checkpoint=right.checkpoint, model_config=preset.model, data_config=preset.data,
        chat_template=preset.data.chat_template, system_prompt=preset.data.system_prompt,
        labels=(label(left) if left else "base", label(right)), notes=notes,
    )


def path_target(base: str | None, adapter: str | None) -> ChatTarget:
    """--base/--adapter without a run: the adapter's recorded base when --base is left out."""
    from engine.artifacts import adapter_base_model

    if adapter and not Path(adapter).is_dir():
        raise CliError(f"--adapter {adapter}: no such folder")
    if base is None and adapter:
        base = adapter_base_model(adapter)
        if not base:
            raise CliError(f"--adapter {adapter} records no base model: pass --base PATH")
    if base is None:
        raise CliError("say what to compare: --run RUN, or --base PATH [--adapter PATH]")
    return ChatTarget(base=base, target=adapter)


def first_question(data_config) -> str | None:
    """The first user turn among a run's local training rows (validation rows left out: the model
    never saw their answers), which the chat screen and the demo ask first; None for hub data or
    when it cannot be read: a suggestion is not worth an error."""
    if data_config is None or not data_config.train_files or not Path(data_config.train_files[0]).is_file():
        return None
    from engine.data import training_samples
    from engine.errors import EngineError

    try:
        samples = training_samples(data_config)
    except EngineError:
        return None
    for sample in samples:
        question = next((m["content"] for m in sample.messages if m["role"] == "user" and m.get("content")), None)
        if question:
            return question
    return None


# --------------------------------------------------------------------------- saving


def save_chat_record(ws, run_id: str | None, kind: str, payload: dict, *, probe=None) -> list[Path]:
    """Save a chat transcript or probe result: a store row tied to the run, and files under
    runs/<id>/chat/ (JSON; a probe also as JSONL and Markdown). Returns the files written."""
    from jobs.store import open_store

    open_store(ws).add_transcript(run_id, kind, payload)
    if run_id is None:
        return []
    folder = ws.run_dir(run_id) / CHAT_DIR
    stamp = time.strftime("%Y%m%d-%H%M%S")
    stem = folder / f"{kind}-{stamp}"
    n = 1
    while stem.with_suffix(".json").exists():
        n += 1
        stem = folder / f"{kind}-{stamp}-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    written = [_write_json(stem.with_suffix(".json"), payload)]
    if probe is not None:
        written += [probe.to_jsonl(stem.with_suffix(".jsonl")), probe.to_markdown(stem.with_suffix(".md"))]
    return written


def _write_json(path: Path, payload: dict) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- the verb


def settings_from_args(args: argparse.Namespace):
    from engine.chat import GenerationSettings

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, seed=args.seed,
    )
    problems = settings.problems()
    if problems:
        raise CliError("; ".join(problems))
    return settings


def probe_examples(target: ChatTarget, tokenizer, *, count: int | None, prompts_file: str | None) -> tuple[list, str]:
    """The probe set: prompts from a file, else the run's validation split. Returns (examples, source)."""
    if prompts_file:
        from engine.chat import load_prompt_file

        return load_prompt_file(prompts_file, count), Path(prompts_file).name
    if target.data_config is None:
        raise CliError("--probe without --run needs --prompts FILE (there is no validation split to draw from)")
    from engine.data import build_datasets

    bundle = build_datasets(target.data_config, tokenizer)
    if not bundle.eval_examples:
        raise CliError(f"run {target.run_id} has no validation split (data.val_ratio is 0 and no data.val_files): "
                       "use --prompts FILE")
    return bundle.eval_examples[:count] if count else bundle.eval_examples, "validation split"


def _chat(args: argparse.Namespace) -> int:
    from engine.errors import EngineError

    ws = workspace(args)
    if args.run and (args.base or args.adapter):
        raise CliError("give either --run or --base/--adapter, not both")
    if (args.checkpoint is not None or args.compare != "base") and not args.run:
        raise CliError("--checkpoint and --compare pick checkpoints of a run: add --run RUN")
    if not args.prompt and args.probe is None and not args.prompts:
        raise CliError("nothing to ask: pass --prompt TEXT, --probe N or --prompts FILE")
    settings = settings_from_args(args)
    target = chat_target(ws, args.run, checkpoint=args.checkpoint, compare=args.compare) if args.run else path_target(args.base, args.adapter)
    out = console(stderr=args.json)
    for note in target.notes:
        out.print(f"[yellow]note:[/] {note}")
    try:
        session = _load(target, args, out)
        system = args.system if args.system is not None else target.system_prompt
        session.system_prompt = system or None
        if args.probe is not None or args.prompts:
            _run_probe(ws, session, target, settings, args, out)
        if args.prompt:
            _run_prompts(ws, session, target, settings, args, out)
    except EngineError as exc:
        raise CliError(str(exc)) from None
    return 0


def _load(target: ChatTarget, args, out):
    from engine.chat import ChatSession

    plan = ChatSession.plan_load(target.base, target.target, compare_to=target.compare_to,
                                 model_config=target.model_config, device=args.device, labels=target.labels)
    allowed = args.yes
    if plan.needs_confirmation and not allowed:
        allowed = confirm(f"{plan.describe()}. Load it?", False)
        if not allowed:
            raise CliError("not loaded: a second full model was declined")
    out.print(f"[dim]loading {target.describe()}: {plan.describe()}[/]")
    return ChatSession.load(target.base, target.target, compare_to=target.compare_to, model_config=target.model_config,
                            chat_template=target.chat_template, system_prompt=target.system_prompt, device=args.device,
                            labels=target.labels, allow_second_model=allowed)


def _run_prompts(ws, session, target: ChatTarget, settings, args, out) -> None:
    from rich.panel import Panel

    records = []
    for prompt in args.prompt:
        answers = session.answer(prompt, settings)
        records.append({"prompt": prompt, "answers": {session.sides[a.side].label: a.text for a in answers}})
        if args.json:
            continue
        out.print(f"[bold]> {prompt}[/]")
        for answer in answers:
            out.print(Panel(answer.text or "[dim](empty)[/]", title=session.sides[answer.side].label,
                            subtitle=answer.stats.line(), title_align="left", subtitle_align="left"))
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=1))
    if not args.no_save:
        files = save_chat_record(ws, target.run_id, "chat", session.transcript(settings))
        if files and not args.json:
            out.print(f"[dim]saved {files[0]}[/]")


def _run_probe(ws, session, target: ChatTarget, settings, args, out) -> None:
    from engine.chat import run_probe

    examples, source = probe_examples(target, session.tokenizer, count=args.probe, prompts_file=args.prompts)
    if not examples:
        raise CliError(f"the probe set is empty ({source})")
    if not args.json:
        out.print(f"[dim]probe: {len(examples)} prompts from {source}[/]")
    result = run_probe(session, examples, settings, source=source)
    if args.json:
        print(json.dumps(result.to_payload(), ensure_ascii=False, indent=1))
    else:
        _print_probe(out, result)
    if args.export:
        result.to_jsonl(f"{args.export}.jsonl")
        result.to_markdown(f"{args.export}.md")
    if not args.no_save:
        files = save_chat_record(ws, target.run_id, "probe", result.to_payload(), probe=result)
        if files and not args.json:
            out.print(f"[dim]saved {', '.join(str(f) for f in files)}[/]")


def _print_probe(out, result) -> None:
    from rich.table import Table

    table = Table(title=f"probe set ({len(result.rows)} prompts, {result.source})", title_justify="left", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("prompt", overflow="fold")
    table.add_column("reference", overflow="fold")
    for label in result.labels:
        table.add_column(label, overflow="fold")
        table.add_column("EM/F1", justify="right")
    for index, row in enumerate(result.rows, 1):
        cells = [str(index), row.prompt, row.reference]
        for i in range(len(result.labels)):
            cells += [row.answers[i], f"{row.exact[i]:.0f} / {row.f1[i]:.2f}"]
        table.add_row(*cells)
    out.print(table)
    for summary in result.summary():
        out.print(f"[bold]{summary['label']}[/]: exact match {summary['exact_match']:.2f}, token F1 {summary['token_f1']:.2f}")
