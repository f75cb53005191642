"""Per-sample losses: which samples the model finds hardest, and which it got worse at.

At the start of training (step 0: the BASE model), at each evaluation and at the end, every
validation sample's loss — the mean cross-entropy over its supervised tokens — is written to

    runs/<id>/samples/step-<N>.jsonl     one line per sample: split, index, loss, tokens, preview, answer

(`split` "val" = the validation row `index` of the prepared data; "train" = the training row
`index`, a fixed subset of training.sample_losses_train rows). Sorting one file by loss gives the
hardest samples (label noise shows up here); subtracting step 0 gives those whose loss rose most
from the base model to the fine-tuned one (forgetting). `jobs.samples` reads them for
`tunebench samples` and the Samples screen.

Step 0 is the base model: for adapter methods it is computed with the adapter switched off
(PeftModel.disable_adapter), which is the base exactly whatever the adapter's initialisation
(PiSSA and OLoRA change the base weights' residual, so "before the first step" would not be the
base), and which also works on resume. Full and freeze methods have no switch: their step 0 is
taken only when training starts from step 0.

Only the file layout and reading are here at module level: jobs/ and the TUI read the files
without importing torch.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from engine.artifacts import write_atomic
from engine.errors import EngineError

SAMPLES_DIR = "samples"
BASE_STEP = 0
PREVIEW_CHARS = 160
ANSWER_CHARS = 120
_STEP_FILE = re.compile(r"^step-(\d+)\.jsonl$")


@dataclass(frozen=True)
class SampleLoss:
    split: str  # "val" or "train"
    index: int  # row of that split in the prepared data
    loss: float  # mean cross-entropy over the sample's supervised tokens
    tokens: int  # supervised tokens it was averaged over
    preview: str  # the start of the rendered sample, whitespace collapsed
    answer: str  # the start of its supervised part

    @property
    def key(self) -> tuple[str, int]:
        return self.split, self.index


# --------------------------------------------------------------------------- files (no torch)


def samples_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / SAMPLES_DIR


def step_file(run_dir: str | Path, step: int) -> Path:
    return samples_dir(run_dir) / f"step-{step}.jsonl"


def saved_steps(run_dir: str | Path) -> list[int]:
    """Steps with per-sample losses on disk, ascending (0 = the base model)."""
    folder = samples_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)))


def read_losses(run_dir: str | Path, step: int) -> list[SampleLoss]:
    """One step's per-sample losses; EngineError naming the file and line for a damaged file."""
    path = step_file(run_dir, step)
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise EngineError(f"cannot read {path}: {exc.strerror or exc}", "check the run folder, or train the run again") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(SampleLoss(str(row["split"]), int(row["index"]), float(row["loss"]), int(row["tokens"]),
                                  str(row.get("preview", "")), str(row.get("answer", ""))))
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{path}:{number}: not a per-sample loss record ({exc})",
                              "delete the file (it is rewritten at the next evaluation), or train the run again") from None
    return out


def write_losses(run_dir: str | Path, step: int, losses: list[SampleLoss]) -> Path:
    path = step_file(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"split": s.split, "index": s.index, "loss": s.loss, "tokens": s.tokens, "preview": s.preview,
                         "answer": s.answer}, ensure_ascii=False) for s in losses]
    write_atomic(path, "".join(line + "\n" for line in lines))  # a reader never sees half a file
    return path


# --------------------------------------------------------------------------- computing (torch)


def _collapse(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class SampleRows:
    """The rows whose losses are measured: (split, index, input_ids, labels) each."""

    rows: list[tuple[str, int, list[int], list[int]]]

    @classmethod
    def of(cls, split: str, dataset, count: int) -> "SampleRows":
        """The first `count` rows of a prepared dataset (one slice: one Arrow read, not one per row)."""
        columns = dataset[:count]
        return cls([(split, i, list(ids), list(labels))
                     for i, (ids, labels) in enumerate(zip(columns["input_ids"], columns["labels"]))])


def compute_losses(model, samples: SampleRows, tokenizer, *, batch_size: int, max_length: int) -> list[SampleLoss]:
    """Each sample's mean loss over its supervised tokens (labels shifted as the model's own loss
    shifts them), in eval mode without gradients; the model's mode is restored after."""
    import torch

    from engine.data import IGNORE_INDEX, make_collator

    collate = make_collator(tokenizer, packing=False, max_length=max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[SampleLoss] = []
    try:
        with torch.no_grad():
            for start in range(0, len(samples.rows), batch_size):
                chunk = samples.rows[start : start + batch_size]
                batch = collate([{"input_ids": ids, "labels": labels} for _, _, ids, labels in chunk])
                logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                               use_cache=False).logits  # no key/value cache: nothing is generated
                # Prompt tuning and P-tuning put their virtual tokens in front: the sample's positions are the last ones.
                logits = logits[:, -batch["input_ids"].shape[1]:]
                targets = batch["labels"][:, 1:].to(device)
                means, counts = [], []
                for row in range(len(chunk)):  # one row's logits in fp32 at a time: a large vocabulary's stay small
                    mask = targets[row] != IGNORE_INDEX
                    count = int(mask.sum())
                    loss = torch.nn.functional.cross_entropy(logits[row, :-1][mask].float(), targets[row][mask], reduction="sum")
                    means.append(float(loss) / max(count, 1))
                    counts.append(count)
                for (split, index, ids, labels), mean, count in zip(chunk, means, counts):
                    ids, labels = ids[:max_length], labels[:max_length]
                    answer = [t for t, label in zip(ids[1:], labels[1:]) if label != IGNORE_INDEX]
                    out.append(SampleLoss(split, index, float(mean), int(count),
                                          _collapse(tokenizer.decode(ids, skip_special_tokens=True), PREVIEW_CHARS),
                                          _collapse(tokenizer.decode(answer, skip_special_tokens=True), ANSWER_CHARS)))
    finally:
        model.train(was_training)
    return out


def _has_adapter(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _callback_class():
    from transformers import TrainerCallback

    class SampleLossCallback(TrainerCallback):
        """Writes step-0 (base), each evaluation's and the last step's per-sample losses."""

        def __init__(self, run_dir: Path, sink, samples: SampleRows, tokenizer, *, batch_size: int, max_length: int):
            self.run_dir, self.sink, self.samples, self.tokenizer = Path(run_dir), sink, samples, tokenizer
            self.batch_size, self.max_length = batch_size, max_length

        def _measure(self, model, step: int, *, base: bool = False) -> None:
            started = time.perf_counter()
            if base:
                with model.disable_adapter():
                    losses = compute_losses(model, self.samples, self.tokenizer, batch_size=self.batch_size, max_length=self.max_length)
            else:
                losses = compute_losses(model, self.samples, self.tokenizer, batch_size=self.batch_size, max_length=self.max_length)
            path = write_losses(self.run_dir, step, losses)
            # The cost is the run's to see: a forward pass over these samples at every evaluation.
            what = "the base model's" if step == BASE_STEP else "per-sample"
            self.sink.event("info", f"sample losses: {what} losses of {len(losses)} samples in "
                                    f"{time.perf_counter() - started:.1f}s → {SAMPLES_DIR}/{path.name}", step)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if not state.is_world_process_zero or step_file(self.run_dir, BASE_STEP).exists():
                return
            if _has_adapter(model):
                self._measure(model, BASE_STEP, base=True)
            elif state.global_step == 0:
                self._measure(model, BASE_STEP)
            else:
                self.sink.event("info", "sample losses: no base-model losses (the run resumed and its method has no "
                                        "adapter to switch off), so `tunebench samples --rose` has nothing to compare with")

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step > 0:
                self._measure(model, state.global_step)

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and state.global_step > 0 and not step_file(self.run_dir, state.global_step).exists():
                self._measure(model, state.global_step)

    return SampleLossCallback


def attach_sample_losses(trainer, preset, run_dir: Path, sink, bundle, tokenizer) -> None:
    """Add the per-sample loss callback to `trainer` when the run can have it (an SFT run with a
    validation split, or with training.sample_losses_train), saying why when it cannot."""
    import os

    if preset.stage != "sft":
        return  # preference stages score pairs, not samples: their own metrics say more
    parts = []
    if bundle.eval is not None and len(bundle.eval):
        parts.append(SampleRows.of("val", bundle.eval, len(bundle.eval)))
    wanted = preset.training.sample_losses_train
    if wanted:
        train = bundle.train
        if not hasattr(train, "__len__") or "position_ids" in (train.column_names or []):
            sink.event("info", "sample losses: no training subset (streamed or pre-packed training rows have no "
                               "per-sample boundary here); validation samples only")
        else:
            # The first rows of the seed's order: a fixed, random-looking subset, the same at every evaluation.
            parts.append(SampleRows.of("train", train, min(wanted, len(train))))
    rows = [row for part in parts for row in part.rows]
    if not rows:
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sink.event("info", "sample losses: not measured in distributed runs (every rank would have to take part)")
        return
    trainer.add_callback(_callback_class()(run_dir, sink, SampleRows(rows), tokenizer,
                                           batch_size=preset.training.batch_size, max_length=preset.data.max_length))
