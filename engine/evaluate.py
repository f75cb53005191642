"""Evaluation jobs: eval loss / perplexity and generation metrics, base and fine-tune side by side.

    run_eval(preset: EvalPreset (targets resolved to paths), out_dir, sink) -> dict

The dataset is the preset's `data`: its validation split when it has one (val_ratio / val_files),
otherwise every row of its files ("evaluate on this file"). Both models see the same tokenizer
and chat template — the fine-tune's, saved with it by the trainer — and the same rows.

- eval loss: mean cross-entropy over the supervised (assistant) tokens of every row, weighted by
  token (so long answers count for what they are); perplexity = exp(loss).
- generation: the first `num_samples` validation conversations, prompt rendered with the
  generation prompt, greedy decoding up to `max_new_tokens` or an end-of-turn token; scored by
  engine.metrics_text (exact match, token F1, ROUGE-L, BLEU).

An adapter (LoRA family, IA3, prompt learning) is loaded once on its base; the base is measured
with the adapter disabled. A full fine-tune (full / freeze) is a second model: base first, freed,
then the fine-tune, so memory never holds both. Results go to out_dir/results.json and results.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from engine.metrics_text import METRIC_LABELS, METRICS, aggregate, score_sample
from engine.outcome import JobOutcome, JobStopped
from engine.sink import Sink

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
BASE, TUNED = "base", "finetuned"


# --------------------------------------------------------------------------- models


def _is_adapter(path: str | None) -> bool:
    return bool(path) and (Path(path) / "adapter_config.json").is_file()


def load_eval_tokenizer(model_cfg, adapter: str | None):
    """The fine-tune's tokenizer when it was saved with it (template, added tokens), else the base's."""
    from transformers import AutoTokenizer

    from engine.models import load_tokenizer

    if adapter and (Path(adapter) / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(adapter)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tokenizer(model_cfg)


def _prepare_for_inference(model) -> None:
    from engine.merge import avoid_cpu_4bit_packing

    avoid_cpu_4bit_packing(model)
    model.eval()


def _load_base(model_cfg, precision: str, tokenizer):
    from engine.models import load_model

    model = load_model(model_cfg, precision=precision, for_training=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the run added tokens; the adapter carries their rows
    _prepare_for_inference(model)
    return model


def _load_adapter(base, adapter: str):
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(base, adapter, is_trainable=False)
    except Exception as exc:
        raise EngineError(f"cannot load the adapter {adapter} on its base: {exc}", "evaluate it with the base it was trained on (model.path)") from None
    _prepare_for_inference(model)
    return model


# --------------------------------------------------------------------------- measuring


class _Progress:
    """Units of work done / total, reported to the sink (the runs table shows it as progress)."""

    def __init__(self, sink: Sink, total: int):
        self.sink, self.total, self.done = sink, max(total, 1), 0

    def advance(self, units: int = 1) -> None:
        self.done += units
        self.sink.metrics(self.done, {"eval_progress": self.done / self.total})
        reason = self.sink.should_stop()
        if reason:
            raise JobStopped(reason)


def _device(model):
    return next(model.parameters()).device


def eval_loss(model, rows, collator, batch_size: int, progress: _Progress | None = None) -> dict[str, float]:
    """Token-weighted mean cross-entropy over supervised tokens, and its perplexity."""
    import torch
    import torch.nn.functional as F

    device = _device(model)
    total, tokens = 0.0, 0
    if hasattr(rows, "with_format"):  # a datasets.Dataset: the lengths from Arrow, not the token lists
        import pyarrow.compute as pc

        lengths = pc.list_value_length(rows.with_format("arrow")["input_ids"]).to_pylist()
    else:
        lengths = [len(r["input_ids"]) for r in rows]
    ordered = sorted(range(len(lengths)), key=lengths.__getitem__)  # less padding; the mean does not care about order
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            batch = collator([rows[i] for i in ordered[start:start + batch_size]])
            input_ids = batch["input_ids"].to(device)
            labels = batch["labels"].to(device)
            attention_mask = batch.get("attention_mask")
            logits = model(input_ids=input_ids, attention_mask=None if attention_mask is None else attention_mask.to(device)).logits
            logits = logits[:, -input_ids.shape[1]:]  # prompt learning prepends virtual tokens
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1)
            total += float(F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum"))
            tokens += int((shift_labels != -100).sum())
            if progress:
                progress.advance()
    if tokens == 0:
        raise EngineError("the evaluation rows have no supervised tokens", "check data.assistant_only_loss and that the rows have answers")
    loss = total / tokens
    return {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 700 else math.inf, "tokens": tokens}


def completion_logps(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int,
                     progress: _Progress | None = None) -> list[float]:
    """Sum of log p(token) over each completion's tokens given its prompt (rendered text, as TRL
    tokenizes it: the completion starts where prompt and prompt + completion tokenize apart)."""
    import torch

    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = []
    for prompt, completion in zip(prompts, completions):
        prompt_ids = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + completion)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(prompt_ids, full)) if a != b), min(len(prompt_ids), len(full)))
        encoded.append((full, max(start, 1)))
    scores = [0.0] * len(encoded)
    ordered = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    with torch.no_grad():
        for first in range(0, len(ordered), batch_size):
            chunk = ordered[first:first + batch_size]
            width = max(len(encoded[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            scored = torch.zeros((len(chunk), width), dtype=torch.bool)
            for row, i in enumerate(chunk):
                full, start = encoded[i]
                ids[row, :len(full)] = torch.tensor(full)
                mask[row, :len(full)] = 1
                scored[row, start:len(full)] = True
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:].float()
            token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
            sums = (token_logps * scored[:, 1:].to(device)).sum(dim=1)
            for row, i in enumerate(chunk):
                scores[i] = float(sums[row])
            if progress:
                progress.advance()
    return scores


def preference_scores(model, tokenizer, rows, batch_size: int, progress: _Progress | None = None) -> dict[str, float]:
    """How a model ranks the validation pairs: preference accuracy (the chosen answer more likely
    than the rejected one), the mean margin in log-probability, and each side's mean. Unpaired
    (KTO) rows: the margin is between the mean desirable and the mean undesirable answer."""
    if "chosen" in rows.column_names:
        chosen = completion_logps(model, tokenizer, rows["prompt"], rows["chosen"], batch_size, progress)
        rejected = completion_logps(model, tokenizer, rows["prompt"], rows["rejected"], batch_size, progress)
        margins = [c - r for c, r in zip(chosen, rejected)]
        return {"accuracy": sum(m > 0 for m in margins) / len(margins), "margin": sum(margins) / len(margins),
                "chosen_logp": sum(chosen) / len(chosen), "rejected_logp": sum(rejected) / len(rejected), "pairs": len(margins)}
    logps = completion_logps(model, tokenizer, rows["prompt"], rows["completion"], batch_size, progress)
    good = [lp for lp, label in zip(logps, rows["label"]) if label]
    bad = [lp for lp, label in zip(logps, rows["label"]) if not label]
    mean = lambda values: sum(values) / len(values) if values else None  # noqa: E731
    margin = mean(good) - mean(bad) if good and bad else None
    return {"accuracy": None, "margin": margin, "chosen_logp": mean(good), "rejected_logp": mean(bad), "pairs": len(logps)}


def generate_answers(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
                     stop_ids: set[int], progress: _Progress | None = None) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), cut at the first end-of-turn token."""
    import torch

    from engine.generation import greedy_decode, is_prompt_learning

    # generate() is wrong for prompt learning on current releases (see engine/generation.py): one prompt at a time
    one_by_one = is_prompt_learning(model)
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(stop_ids))
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            if one_by_one:
                rows = [greedy_decode(model, ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids) for ids in chunk]
            else:
                rows = _generate_batch(model, chunk, device=device, pad_id=pad_id, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
            for row in rows:
                cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
                answers.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
            if progress:
                progress.advance()
    return answers


def _generate_batch(model, chunk: list[list[int]], *, device, pad_id: int, max_new_tokens: int, stop_ids: set[int]) -> list[list[int]]:
    import torch

    width = max(len(p) for p in chunk)
    input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, ids in enumerate(chunk):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
        eos_token_id=sorted(stop_ids), pad_token_id=pad_id,
        temperature=None, top_p=None, top_k=None,
    )
    return output[:, width:].tolist()


# --------------------------------------------------------------------------- data


def measure_sides(preset, adapter: str | None, full_finetune: bool, precision: str, tokenizer, sides: list[str], measure) -> None:
    """Call measure(side, model[, context]) for the base and the fine-tune: an adapter is loaded once
    on its base (the base measured with it switched off); a full fine-tune is a second model, loaded
    after the base is freed, so memory never holds both."""
    import gc

    import torch

    base = _load_base(preset.model, precision, tokenizer)
    if adapter and not full_finetune:
        model = _load_adapter(base, adapter)
        if BASE in sides:
            measure(BASE, model, model.disable_adapter)
        measure(TUNED, model)
        return
    if BASE in sides:
        measure(BASE, base)
    if full_finetune:
        del base
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        measure(TUNED, _load_base(preset.model.model_copy(update={"path": str(adapter), "revision": None}), precision, tokenizer))


def eval_data(data):
    """The preset's data as an evaluation set: its validation split, or every row when it has none."""
    if data.val_files or data.val_ratio:
        return data, "validation split"
    return data.model_copy(update={"val_files": list(data.train_files), "max_samples": None}), "all rows"


def _prompt_text(messages: list[dict]) -> str:
    user = [m for m in messages if m.get("role") == "user"]
    return str((user[-1] if user else messages[-1]).get("content", "")) if messages else ""


# --------------------------------------------------------------------------- the job


def run_eval(preset, out_dir: str | Path, sink: Sink | None = None) -> JobOutcome:
    """Evaluate a resolved EvalPreset; write results.json / results.md in out_dir; the outcome's details are the results."""
    from engine.models import quiet_libraries

    sink = sink or Sink()
    quiet_libraries()
    try:
        return JobOutcome("completed", details=_run_eval(preset, Path(out_dir), sink))
    except JobStopped as stop:
        sink.event("warning", f"evaluation stopped ({stop.reason}); no results written")
        return JobOutcome.stopped(stop.reason)


def _run_eval(preset, out_dir: Path, sink: Sink) -> dict[str, Any]:
    from engine.data import build_datasets, make_collator, prompt_ids
    from engine.data.render import end_of_turn_ids
    from engine.models import resolve_precision, training_device

    started = time.time()
    if preset.model is None:
        raise EngineError("the eval preset has no base model", "set model: (or run:, which the jobs layer resolves)")
    if preset.data is None:
        raise EngineError("the eval preset has no dataset", "set data: (a file to evaluate on), or run: to use the run's validation split")
    adapter = preset.adapter
    if adapter and not Path(adapter).is_dir():
        raise EngineError(f"adapter {adapter}: no such directory", "check the run's checkpoints (`tunebench checkpoints RUN`)")
    full_finetune = bool(adapter) and not _is_adapter(adapter)
    if full_finetune and not (Path(adapter) / "config.json").is_file():
        raise EngineError(f"{adapter} holds neither an adapter nor a model", "point adapter: at a run's final/ or checkpoint folder")

    device = training_device()
    precision = resolve_precision("auto", device)
    sink.event("info", f"loading tokenizer and data ({preset.model.path})")
    tokenizer = load_eval_tokenizer(preset.model, adapter)
    if (preset.stage or "sft") != "sft":
        return _run_preference_eval(preset, out_dir, sink, tokenizer, adapter, full_finetune, device, precision, started)
    data, dataset_kind = eval_data(preset.data)
    from engine.data.cache import cache_dir_for

    bundle = build_datasets(data, tokenizer, seed=data.shuffle_seed, cache_dir=cache_dir_for(out_dir))  # a run's split: its cache entry
    rows = bundle.eval or []
    if not rows:
        raise EngineError(f"no evaluation rows in {', '.join(data.val_files or data.train_files)}", "see `tunebench data PRESET` for what was dropped and why")
    examples = bundle.eval_examples[: preset.num_samples]
    template = bundle.chat_template
    prompts = [prompt_ids(tokenizer, e.messages, chat_template=template, tools=e.tools) for e in examples]
    stop_ids = end_of_turn_ids(tokenizer)
    collator = make_collator(tokenizer, packing=False, max_length=data.max_length)

    sides = ([BASE] if preset.compare_base or not adapter else []) + ([TUNED] if adapter else [])
    loss_batches = math.ceil(len(rows) / preset.batch_size)
    gen_batches = math.ceil(len(prompts) / preset.batch_size)
    progress = _Progress(sink, len(sides) * (loss_batches + gen_batches))
    sink.run_started({"total_steps": progress.total, "method": "eval", "device": str(device), "precision": precision,
                      "eval_samples": len(rows), "generation_samples": len(prompts)})
    sink.event("info", f"evaluating {' and '.join(sides)} on {len(rows)} rows ({dataset_kind}), generating {len(prompts)} answers")

    losses: dict[str, dict] = {}
    outputs: dict[str, list[str]] = {}

    def measure(side: str, model, context=nullcontext) -> None:
        with context():
            losses[side] = eval_loss(model, rows, collator, preset.batch_size, progress)
            outputs[side] = generate_answers(model, tokenizer, prompts, max_new_tokens=preset.max_new_tokens,
                                             batch_size=preset.batch_size, stop_ids=stop_ids, progress=progress) if prompts else []
        sink.event("info", f"{side}: eval loss {losses[side]['eval_loss']:.4f}, perplexity {losses[side]['perplexity']:.3g}")

    measure_sides(preset, adapter, full_finetune, precision, tokenizer, sides, measure)

    references = [e.reference for e in examples]
    samples = []
    for index, (example, reference) in enumerate(zip(examples, references)):
        entry: dict[str, Any] = {"index": index, "prompt": _prompt_text(example.messages), "reference": reference}
        for side in sides:
            entry[side] = {"output": outputs[side][index], **score_sample(outputs[side][index], reference)}
        samples.append(entry)
    generation = {side: aggregate(outputs[side], references, [s[side] for s in samples]) if samples else {}
                  for side in sides}

    results: dict[str, Any] = {
        "status": "completed",
        "target": {"run": preset.run, "checkpoint": preset.checkpoint, "base_model": preset.model.path, "adapter": adapter,
                   "kind": "full model" if full_finetune else ("adapter" if adapter else "base only")},
        "dataset": {"files": list(data.val_files or data.train_files), "split": dataset_kind, "rows": len(rows),
                    "generation_samples": len(prompts), "chat_template": bundle.report.chat_template},
        "settings": {"max_new_tokens": preset.max_new_tokens, "batch_size": preset.batch_size, "device": str(device),
                     "precision": precision, "decoding": "greedy"},
        "sides": sides,
        "loss": losses,
        "generation": generation,
        "samples": samples,
        "seconds": round(time.time() - started, 2),
    }
    final = {}
    for side in sides:
        prefix = "" if side == sides[-1] else "base_"  # the evaluated model's numbers carry plain names
        final[f"{prefix}eval_loss"] = losses[side]["eval_loss"]
        final[f"{prefix}eval_ppl"] = losses[side]["perplexity"]
        final.update({f"{prefix}{name}": value for name, value in generation[side].items()})
    sink.metrics(progress.done, final)
    write_results(results, out_dir)
    sink.event("info", f"results written to {out_dir / RESULTS_MD}")
    return results


def _run_preference_eval(preset, out_dir: Path, sink: Sink, tokenizer, adapter: str | None, full_finetune: bool,
                         device, precision: str, started: float) -> dict[str, Any]:
    """A preference run's evaluation: how base and fine-tune rank the validation pairs."""
    from engine.data.preference import build_preference_datasets
    from presets.schema import TrainPreset

    data, dataset_kind = eval_data(preset.data)
    pairs_preset = TrainPreset(name=preset.name, model=preset.model, data=data, stage=preset.stage)
    bundle = build_preference_datasets(pairs_preset, tokenizer, seed=data.shuffle_seed)
    rows = bundle.eval
    if rows is None or not len(rows):
        raise EngineError(f"no evaluation pairs in {', '.join(data.val_files or data.train_files)}", "see `tunebench data PRESET` for what was dropped and why")
    sides = ([BASE] if preset.compare_base or not adapter else []) + ([TUNED] if adapter else [])
    passes = 2 if "chosen" in rows.column_names else 1
    progress = _Progress(sink, len(sides) * passes * math.ceil(len(rows) / preset.batch_size))
    sink.run_started({"total_steps": progress.total, "method": "eval", "device": str(device), "precision": precision,
                      "eval_samples": len(rows), "generation_samples": 0})
    sink.event("info", f"ranking {len(rows)} validation {'pairs' if passes == 2 else 'answers'} ({dataset_kind}) with {' and '.join(sides)}")
    scores: dict[str, dict] = {}

    def measure(side: str, model, context=nullcontext) -> None:
        with context():
            scores[side] = preference_scores(model, tokenizer, rows, preset.batch_size, progress)
        accuracy = scores[side]["accuracy"]
        sink.event("info", f"{side}: preference accuracy {_number(accuracy)}, mean margin {_number(scores[side]['margin'])}")

    measure_sides(preset, adapter, full_finetune, precision, tokenizer, sides, measure)

    results: dict[str, Any] = {
        "status": "completed",
        "stage": preset.stage,
        "target": {"run": preset.run, "checkpoint": preset.checkpoint, "base_model": preset.model.path, "adapter": adapter,
                   "kind": "full model" if full_finetune else ("adapter" if adapter else "base only")},
        "dataset": {"files": list(data.val_files or data.train_files), "split": dataset_kind, "rows": len(rows),
                    "generation_samples": 0, "chat_template": bundle.report.format},
        "settings": {"batch_size": preset.batch_size, "device": str(device), "precision": precision, "decoding": "none"},
        "sides": sides,
        "loss": {},
        "generation": {},
        "preference": scores,
        "samples": [],
        "seconds": round(time.time() - started, 2),
    }
    final = {}
    for side in sides:
        prefix = "" if side == sides[-1] else "base_"
        final.update({f"{prefix}preference_{key}": value for key, value in scores[side].items()
                      if key in ("accuracy", "margin") and value is not None})
    sink.metrics(progress.done, final)
    write_results(results, out_dir)
    sink.event("info", f"results written to {out_dir / RESULTS_MD}")
    return results


# --------------------------------------------------------------------------- reports


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / RESULTS_JSON, json.dumps(results, indent=1, ensure_ascii=False, default=str))
    _atomic_write(out_dir / RESULTS_MD, results_markdown(results))


def _cell(text: Any, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "–"


def results_markdown(results: dict) -> str:
    sides = results["sides"]
    target = results["target"]
    names = {BASE: "base", TUNED: "fine-tuned"}
    what = target.get("adapter") or target.get("base_model")
    checkpoint = f" checkpoint {target['checkpoint']}" if target.get("checkpoint") is not None else ""
    run = f"run {target['run']}{checkpoint}: " if target.get("run") else ""
    dataset = results["dataset"]
    lines = [
        f"# Evaluation — {run}{what}",
        "",
        f"{dataset['rows']} rows ({dataset['split']} of {', '.join(dataset['files'])}); " + (
            f"each pair ranked by the log-probability of its answers ({dataset['chat_template']})." if "preference" in results else
            f"{dataset['generation_samples']} generated answers, greedy, up to {results['settings']['max_new_tokens']} tokens; "
            f"chat template: {dataset['chat_template']}."),
        "",
        "| metric | " + " | ".join(names[s] for s in sides) + (" | Δ |" if len(sides) == 2 else " |"),
        "|---|" + "---:|" * (len(sides) + (1 if len(sides) == 2 else 0)),
    ]
    if "preference" in results:
        rows = [("preference accuracy", "preference", "accuracy"), ("mean margin (log-prob)", "preference", "margin"),
                ("chosen log-prob", "preference", "chosen_logp"), ("rejected log-prob", "preference", "rejected_logp")]
    else:
        rows = [("eval loss", "loss", "eval_loss"), ("perplexity", "loss", "perplexity")]
        rows += [(METRIC_LABELS[m] + (" (0–100)" if m == "bleu" else ""), "generation", m) for m in METRICS]
    for label, section, key in rows:
        values = [results[section].get(s, {}).get(key) for s in sides]
        cells = [_number(v) for v in values]
        if len(sides) == 2:
            both = all(isinstance(v, (int, float)) for v in values)
            cells.append(f"{values[1] - values[0]:+.4g}" if both else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if results["samples"]:
        lines += ["", "## Samples", "", "| # | prompt | reference | " + " | ".join(f"{names[s]} (EM / F1)" for s in sides) + " |",
                  "|---:|---|---|" + "---|" * len(sides)]
        for sample in results["samples"]:
            cells = [f"{_cell(sample[s]['output'])} ({sample[s]['exact_match']:.0f} / {sample[s]['token_f1']:.2f})" for s in sides]
            lines.append(f"| {sample['index']} | {_cell(sample['prompt'])} | {_cell(sample['reference'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
