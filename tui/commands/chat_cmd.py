"""`tunebench chat`: base and fine-tuned answers side by side, headless (for scripts).

    tunebench chat --run RUN [--checkpoint STEP] [--compare STEP] --prompt TEXT
    tunebench chat --run RUN --probe N            # N prompts of the run's validation split, scored
    tunebench chat --run RUN --prompts FILE       # a probe set from a file of prompts
    tunebench chat --base PATH --adapter PATH --prompt TEXT

Transcripts and probe results of a run are saved in the workspace: the store (transcripts table)
and runs/<id>/chat/ (jobs/chats.py, which the chat screen uses too).
"""

from __future__ import annotations

import argparse
import json

from tui.commands.common import CliError, confirm, console, workspace


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


def _chat(args: argparse.Namespace) -> int:
    from jobs.targets import chat_target, path_target

    ws = workspace(args)
    if args.run and (args.base or args.adapter):
        raise CliError("give either --run or --base/--adapter, not both")
    if (args.checkpoint is not None or args.compare != "base") and not args.run:
        raise CliError("--checkpoint and --compare pick checkpoints of a run: add --run RUN")
    if not args.prompt and args.probe is None and not args.prompts:
        raise CliError("nothing to ask: pass --prompt TEXT, --probe N or --prompts FILE")
    settings = settings_from_args(args)
    out = console(stderr=args.json)
    target = chat_target(ws, args.run, checkpoint=args.checkpoint, compare=args.compare) if args.run else path_target(args.base, args.adapter)
    for note in target.notes:
        out.print(f"[yellow]note:[/] {note}")
    session = _load(target, args, out)
    system = args.system if args.system is not None else target.system_prompt
    session.system_prompt = system or None
    if args.probe is not None or args.prompts:
        _run_probe(ws, session, target, settings, args, out)
    if args.prompt:
        _run_prompts(ws, session, target, settings, args, out)
    return 0


def _load(target, args, out):
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


def _run_prompts(ws, session, target, settings, args, out) -> None:
    from rich.panel import Panel

    from jobs.chats import save_chat_record

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


def _run_probe(ws, session, target, settings, args, out) -> None:
    from engine.chat import run_probe
    from jobs.chats import probe_examples, save_chat_record

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
