"""Helpers for the engine tests (no tests here): a recording sink and tiny-model presets."""

from __future__ import annotations

import json
from pathlib import Path

from engine.sink import Sink

# Built-in presets point at a hub model and data/alpaca.json; these overrides point them at the
# tiny model and the demo data and keep each run to a few CPU seconds.
TINY_RUN = [
    "data.max_samples=16",
    "data.max_length=64",
    "data.val_ratio=0",
    "training.max_steps=3",
    "training.batch_size=4",
    "training.grad_accum=1",
    "training.logging_steps=1",
    "training.save_steps=3",
    "training.eval_steps=null",
    "training.warmup_ratio=0",
]


def tiny_preset(name: str, tiny_model_dir: Path, data_file: Path, *overrides: str):
    from presets import load_preset

    return load_preset(name, None, [f"model.path={tiny_model_dir}", f"data.train_files={data_file}", *TINY_RUN, *overrides])


class RecordingSink(Sink):
    """Keeps every call; asks to stop with `stop_reason` once a logged step reaches `stop_at`."""

    def __init__(self, stop_at: int | None = None, stop_reason: str = "cancel"):
        self.calls: list[tuple[str, tuple]] = []
        self.stop_at = stop_at
        self.stop_reason = stop_reason
        self.last_step = 0

    def run_started(self, info):
        self.calls.append(("run_started", (info,)))

    def metrics(self, step, values):
        self.last_step = max(self.last_step, step)
        self.calls.append(("metrics", (step, dict(values))))

    def event(self, level, text, step=None):
        self.calls.append(("event", (level, text, step)))

    def checkpoint(self, step, path, metrics):
        self.calls.append(("checkpoint", (step, path, dict(metrics))))

    def checkpoint_removed(self, step, path):
        self.calls.append(("checkpoint_removed", (step, path)))

    def finding(self, finding):
        self.calls.append(("finding", (finding,)))

    def should_stop(self):
        if self.stop_at is not None and self.last_step >= self.stop_at:
            return self.stop_reason
        return None

    def of(self, kind: str) -> list[tuple]:
        return [args for name, args in self.calls if name == kind]

    def series(self, name: str) -> dict[int, float]:
        return {step: values[name] for step, values in self.of("metrics") if name in values}


def jsonl_records(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if kind is None or r["type"] == kind]


def logits(model, input_ids):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits.float()
