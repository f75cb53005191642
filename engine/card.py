"""Model cards: the README.md with Hugging Face metadata that every result folder carries.

`write_model_card(folder, run_dir=…, merge=…)` is the one entry point: train.py calls it for
final/, the merge job for merged models, export for exported folders, push before uploading.
Everything on the card is read from the folder itself and from the run folder's own records
(preset.yaml, metrics.jsonl, evals/*/results.json), so a card can be rewritten at any time.
Written with huggingface_hub's ModelCard / ModelCardData (no torch import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.artifacts import METRICS_FILE, PRESET_FILE, adapter_base_model, is_adapter_dir, write_atomic

CARD_FILE = "README.md"
EVALS_DIR = "evals"
METRIC_NAMES = {"eval_loss": "loss", "perplexity": "perplexity", "exact_match": "exact match",
                "token_f1": "token F1", "rouge_l": "ROUGE-L", "bleu": "BLEU"}


def _read_preset(run_dir: Path | None):
    if run_dir is None or not (run_dir / PRESET_FILE).is_file():
        return None
    from presets import load_preset_text

    try:
        return load_preset_text((run_dir / PRESET_FILE).read_text(encoding="utf-8"), str(run_dir / PRESET_FILE))
    except Exception:  # a preset that no longer validates here (an extra uninstalled): the card goes without it
        return None


def training_figures(run_dir: Path) -> dict[str, Any]:
    """The run's figures from metrics.jsonl: samples, parameters, steps, epochs, last loss, best eval loss."""
    figures: dict[str, Any] = {}
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return figures
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a crash
            continue
        if record.get("type") == "run_started":
            figures.update({k: record[k] for k in ("train_samples", "eval_samples", "trainable_params", "total_params",
                                                   "precision", "device") if record.get(k) is not None})
        elif record.get("type") == "metrics":
            figures["steps"] = max(figures.get("steps", 0), record.get("step") or 0)
            for key, name in (("loss", "final_train_loss"), ("epoch", "epochs")):
                if isinstance(record.get(key), (int, float)):
                    figures[name] = record[key]
            eval_loss = record.get("eval_loss")
            if isinstance(eval_loss, (int, float)) and eval_loss < figures.get("best_eval_loss", float("inf")):
                figures["best_eval_loss"], figures["best_eval_step"] = eval_loss, record.get("step")
    return figures


def latest_eval(run_dir: Path | None, checkpoint: int | None) -> dict | None:
    """The newest evaluation results of this run's result (checkpoint None = final/)."""
    if run_dir is None or not (run_dir / EVALS_DIR).is_dir():
        return None
    found = []
    for results in (run_dir / EVALS_DIR).glob("*/results.json"):
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if data.get("status") == "completed" and data.get("target", {}).get("checkpoint") == checkpoint:
            found.append((results.stat().st_mtime, data))
    return max(found, key=lambda item: item[0])[1] if found else None


def _is_hub_id(path: str | None) -> bool:
    """A hub id (org/name), not a local folder: only those may stand in base_model / datasets."""
    if not path or Path(path).expanduser().exists() or path.startswith((".", "/", "~")):
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.endswith((".json", ".jsonl", ".csv", ".parquet", ".txt"))


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _method_parameters(preset) -> dict[str, Any]:
    method = preset.method
    params: dict[str, Any] = {}
    section = getattr(method, method.name, None) or (method.lora if "lora" in method.name else None)
    if section is not None and hasattr(section, "model_dump"):
        params.update(section.model_dump(mode="json", by_alias=True))
    training = preset.training
    params.update(lr=training.lr, epochs=training.epochs, max_steps=training.max_steps, batch_size=training.batch_size,
                  grad_accum=training.grad_accum, scheduler=training.scheduler, optimizer=training.optimizer,
                  precision=training.precision)
    if preset.model.quantization.mode != "none":
        params["quantization"] = preset.model.quantization.mode
    return {k: v for k, v in params.items() if v is not None and v != []}


def model_card(folder: str | Path, *, run_dir: str | Path | None = None, checkpoint: int | None = None,
               merge: dict | None = None):
    """The ModelCard for the result in `folder` (not written)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    run_dir = Path(run_dir) if run_dir else None
    preset = _read_preset(run_dir)
    adapter = is_adapter_dir(folder)
    base = adapter_base_model(folder) if adapter else None
    if merge:
        base = merge.get("base_model") or base
    if base is None and preset is not None:
        base = preset.model.path
    method = merge.get("method") if merge else (preset.method.name if preset is not None else None)
    tags = ["tunebench", "text-generation"] + ([method] if method else []) + (["merge"] if merge else [])
    if adapter:
        tags.append("peft")
    data_files = list(preset.data.train_files) + list(preset.data.val_files or []) if preset is not None else []
    figures = training_figures(run_dir) if run_dir else {}
    evaluation = latest_eval(run_dir, checkpoint) if not merge else None

    eval_results = []
    if evaluation:
        side = evaluation["sides"][-1]
        dataset = ", ".join(Path(f).name for f in evaluation["dataset"]["files"])
        values = {**evaluation.get("loss", {}).get(side, {}), **evaluation.get("generation", {}).get(side, {})}
        for key, label in METRIC_NAMES.items():
            if isinstance(values.get(key), (int, float)):
                eval_results.append(EvalResult(task_type="text-generation", dataset_type="json", dataset_name=dataset,
                                               metric_type=key, metric_name=label, metric_value=float(values[key])))
    hub_base = base if _is_hub_id(base) else None
    data = ModelCardData(
        base_model=hub_base,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[f for f in data_files if _is_hub_id(f)] or None,
        eval_results=eval_results or None,
        model_name=folder.name if eval_results else None,
    )

    name = (preset.name if preset is not None else folder.name)
    what = "A PEFT adapter" if adapter else ("A merged model" if merge else "A fine-tuned model")
    origin = f" of run {run_dir.name}" + (f", checkpoint {checkpoint}" if checkpoint is not None else "") if run_dir else ""
    lines = [f"# {name}", "", f"{what}{origin}, made with tunebench" + (f" from `{base}`" if base else "") + ".", ""]
    if merge:
        lines += ["## Merge", "", "| setting | value |", "|---|---|"]
        for key in ("method", "base_model", "adapter", "dtype", "max_abs_diff", "t", "lambda", "density"):
            if merge.get(key) is not None:
                lines.append(f"| {key} | {_number(merge[key])} |")
        for source in merge.get("models") or []:
            lines.append(f"| model | {source.get('model') or source.get('path') or source} |")
        lines.append("")
    if preset is not None:
        lines += ["## Method", "", f"Method `{preset.method.name}`" + (f" on a {preset.model.quantization.mode} base"
                  if preset.model.quantization.mode != "none" else "") + ".", "", "| parameter | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v) if not isinstance(v, list) else ', '.join(map(str, v))} |"
                  for k, v in _method_parameters(preset).items()]
        lines += ["", "## Data", "", f"Format `{preset.data.format}`, max length {preset.data.max_length}.", ""]
        lines += [f"- `{f}`" for f in data_files]
        if "train_samples" in figures:
            lines += ["", f"{figures['train_samples']:,} training samples, {figures.get('eval_samples', 0):,} validation samples."]
        lines.append("")
    if figures.get("steps"):
        lines += ["## Training", "", "| figure | value |", "|---|---|"]
        labels = (("steps", "optimizer steps"), ("epochs", "epochs"), ("final_train_loss", "final train loss"),
                  ("best_eval_loss", "best eval loss"), ("trainable_params", "trainable parameters"),
                  ("total_params", "total parameters"), ("precision", "precision"), ("device", "device"))
        for key, label in labels:
            if key in figures:
                suffix = f" (step {figures['best_eval_step']})" if key == "best_eval_loss" else ""
                lines.append(f"| {label} | {_number(figures[key])}{suffix} |")
        lines.append("")
    if evaluation:
        lines += ["## Evaluation", "", f"On {evaluation['dataset']['rows']} rows of "
                  f"{', '.join(Path(f).name for f in evaluation['dataset']['files'])} ({evaluation['dataset']['split']}).", "",
                  "| metric | " + " | ".join(evaluation["sides"]) + " |", "|---|" + "---:|" * len(evaluation["sides"])]
        for key, label in METRIC_NAMES.items():
            cells = [{**evaluation.get("loss", {}).get(s, {}), **evaluation.get("generation", {}).get(s, {})}.get(key)
                     for s in evaluation["sides"]]
            if any(isinstance(c, (int, float)) for c in cells):
                lines.append(f"| {label} | " + " | ".join("–" if c is None else _number(c) for c in cells) + " |")
        lines.append("")
    lines += ["## How to load", "", "```python"]
    if adapter:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'base = AutoModelForCausalLM.from_pretrained("{base}")',
                  'model = PeftModel.from_pretrained(base, "PATH_OR_REPO_OF_THIS_FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_OF_THIS_FOLDER")']
    else:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO_OF_THIS_FOLDER")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO_OF_THIS_FOLDER")']
    lines += ["```", ""]
    if preset is not None and not hub_base:
        lines[3:3] = [f"The base model was the local folder `{base}`; set `base_model` to its hub id before sharing.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def result_origin(folder: str | Path) -> dict[str, Any]:
    """run_dir and checkpoint of a result folder inside a run (final/ or checkpoints/checkpoint-N), else {}."""
    folder = Path(folder).resolve()
    if folder.name == "final" and (folder.parent / PRESET_FILE).is_file():
        return {"run_dir": folder.parent}
    if folder.parent.name == "checkpoints" and folder.name.startswith("checkpoint-") and folder.name[11:].isdigit():
        return {"run_dir": folder.parent.parent, "checkpoint": int(folder.name[11:])}
    return {}


def write_model_card(folder: str | Path, *, run_dir: str | Path | None = None, checkpoint: int | None = None,
                     merge: dict | None = None) -> Path:
    """Write (or rewrite) `folder`/README.md; returns its path."""
    path = Path(folder) / CARD_FILE
    write_atomic(path, str(model_card(folder, run_dir=run_dir, checkpoint=checkpoint, merge=merge)))
    return path
