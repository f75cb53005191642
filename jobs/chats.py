"""What the chat pane and `tunebench chat` share besides the models: the probe set, a question to
ask first, and saving transcripts and probe results in the workspace.

A run's transcripts live twice: a row of the store's transcripts table, tied to the run, and files
under runs/<id>/chat/ that travel with the run folder. The engine is imported inside the functions
that need it (chat.py and the data pipeline pull in torch).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from jobs.store import open_store
from jobs.targets import ChatTarget, TargetError, chat_target
from jobs.workspace import Workspace

CHAT_DIR = "chat"


def save_chat_record(ws: Workspace, run_id: str | None, kind: str, payload: dict, *, probe=None) -> list[Path]:
    """Save a chat transcript or probe result: a store row tied to the run, and files under
    runs/<id>/chat/ (JSON; a probe also as JSONL and Markdown). Returns the files written."""
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


def probe_examples(target: ChatTarget, tokenizer, *, count: int | None, prompts_file: str | None) -> tuple[list, str]:
    """The probe set: prompts from a file, else the run's validation split. Returns (examples, source)."""
    if prompts_file:
        from engine.chat import load_prompt_file

        return load_prompt_file(prompts_file, count), Path(prompts_file).name
    if target.data_config is None:
        raise TargetError("--probe without --run needs --prompts FILE (there is no validation split to draw from)")
    from engine.data import build_datasets

    bundle = build_datasets(target.data_config, tokenizer)
    if not bundle.eval_examples:
        raise TargetError(f"run {target.run_id} has no validation split (data.val_ratio is 0 and no data.val_files): "
                          "use --prompts FILE")
    return bundle.eval_examples[:count] if count else bundle.eval_examples, "validation split"


def compare_on_training_question(ws: Workspace, run_id: str) -> dict:
    """The demo's check: ask base and fine-tuned a question the run trained on (one loaded base),
    and say which answer is the training answer exactly."""
    from engine.chat import ChatSession, GenerationSettings
    from engine.demo_data import demo_rows

    target = chat_target(ws, run_id)
    question = first_question(target.data_config)
    reference = next(row["output"] for row in demo_rows() if row["instruction"] == question)
    session = ChatSession.load(target.base, target.target, model_config=target.model_config,
                               chat_template=target.chat_template, system_prompt=target.system_prompt,
                               labels=target.labels)
    try:
        answers = session.answer(question, GenerationSettings(max_new_tokens=32))
    finally:
        session.close()
    result = {"question": question, "reference": reference}
    for name, answer in zip(("base", "fine-tuned"), answers):
        result[name] = {"text": answer.text, "exact": answer.text.strip() == reference}
    return result
