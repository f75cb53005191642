"""A trained-looking run without training: the layout engine.train leaves (checkpoints with
trainer_state.json, final/ adapter) and the store rows the DbSink writes. For the checkpoint,
target and CLI tests, which need files and rows, not weights."""

from __future__ import annotations

import json
from pathlib import Path

from jobs.store import Store, open_store
from jobs.workspace import Workspace

EVAL_LOSS = {10: 2.0, 20: 1.5, 30: 1.7}
TRAIN_LOSS = {10: 2.4, 20: 1.8, 30: 1.2}


def train_preset_yaml(ws: Workspace, method: str = "lora") -> str:
    from presets import dump_preset, load_preset, resolve_paths

    overrides = [f"method.name={method}"]
    return dump_preset(resolve_paths(load_preset("demo", ws.root, overrides), ws.root))


def write_checkpoint(folder: Path, step: int, *, adapter: bool = True, eval_loss: float | None = None,
                     train_loss: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    history = []
    if train_loss is not None:
        history.append({"step": step, "loss": train_loss})
    if eval_loss is not None:
        history.append({"step": step, "eval_loss": eval_loss})
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    if adapter:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "base"}))
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    else:
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"\0" * 2000)
    (folder / "optimizer.pt").write_bytes(b"\0" * 3000)
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


def fake_trained_run(ws: Workspace, *, method: str = "lora", steps=(10, 20, 30), name: str = "trained",
                     final: bool = True, state: str = "completed", run_id: str | None = None) -> str:
    """A run with checkpoints at `steps` (eval losses EVAL_LOSS: best is step 20) and final/."""
    store: Store = open_store(ws)
    run = store.create_run("train", name, train_preset_yaml(ws, method), run_id=run_id)
    store.set_state(run.id, "running")
    run_dir = ws.run_dir(run.id)
    adapter = method not in ("full", "freeze")
    (run_dir).mkdir(parents=True, exist_ok=True)
    (run_dir / "preset.yaml").write_text(run.preset_yaml)
    for step in steps:
        path = write_checkpoint(run_dir / "checkpoints" / f"checkpoint-{step}", step, adapter=adapter,
                                eval_loss=EVAL_LOSS.get(step), train_loss=TRAIN_LOSS.get(step))
        metrics = {"loss": TRAIN_LOSS.get(step, 1.0)}
        if step in EVAL_LOSS:
            metrics["eval_loss"] = EVAL_LOSS[step]
        store.add_checkpoint(run.id, step, str(path), metrics, 6000)
    if final:
        write_checkpoint(run_dir / "final", max(steps), adapter=adapter)
        (run_dir / "final" / "trainer_state.json").unlink()
        (run_dir / "final" / "optimizer.pt").unlink()
    if state != "running":
        store.set_state(run.id, state)
    return run.id
