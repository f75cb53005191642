"""Answers at every checkpoint: the preset's probes, answered greedily by the in-memory model at each save.

Each answer is rendered with the run's chat template and system prompt and decoded greedily, as the
chat pane does (engine.data.prompt_ids, engine.generation.greedy_decode, the chat's stop tokens),
so an answer equals what chat with that checkpoint says at temperature 0. The answers are appended
to the run's probes.jsonl, one record per probe and save:

    {"step": 50, "probe": 0, "prompt": "...", "answer": "...", "tokens": 7, "seconds": 0.12, "time": ...}

The time a save spends on them goes to the sink as the metric `probe_s` and an info event.
Under distributed training no probe is answered: a model sharded over the ranks (FSDP, ZeRO-3)
cannot generate on the main rank alone, and the run's events say so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from engine.artifacts import RunArtifacts, write_atomic
from engine.errors import EngineError
from engine.sink import Sink
from presets.schema import TrainPreset


def answer_probes(model, tokenizer, prompts: list[str], *, max_new_tokens: int, chat_template: str | None = None,
                  system_prompt: str | None = None) -> list[dict]:
    """Greedy answers of `model` to each prompt: [{prompt, answer, tokens, seconds}]. The model is put
    in eval mode for them and back in the mode it was in (dropout off, NEFTune's noise off)."""
    from engine.chat import _stop_token_ids
    from engine.data import prompt_ids
    from engine.generation import greedy_decode

    stop_ids = _stop_token_ids(tokenizer, [model])
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    was_training = model.training
    model.eval()
    answers = []
    try:
        for prompt in prompts:
            started = time.perf_counter()
            ids = prompt_ids(tokenizer, system + [{"role": "user", "content": prompt}], chat_template=chat_template)
            generated = greedy_decode(model, ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids)
            answers.append({
                "prompt": prompt, "answer": tokenizer.decode(generated, skip_special_tokens=True),
                "tokens": len(generated), "seconds": time.perf_counter() - started,
            })
    finally:
        model.train(was_training)
    return answers


def _step_of(line: str) -> float:
    """The step of a probes.jsonl line; infinity for a line cut short by a crash (it goes)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class ProbeCallback(TrainerCallback):
    """Answers the probes after every checkpoint save, on the main process."""

    def __init__(self, preset: TrainPreset, run_dir: Path, sink: Sink, tokenizer, prompts: list[str]):
        self.preset = preset
        self.artifacts = RunArtifacts(Path(run_dir))
        self.sink = sink
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.seconds: dict[int, float] = {}  # step → the time its save spent on the probes

    def on_train_begin(self, args, state, control, **kwargs):
        # A run resumed from an earlier checkpoint trains the later steps again: their old answers go.
        path = self.artifacts.probes_file
        if not state.is_world_process_zero or not path.is_file():
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= state.global_step]
        write_atomic(path, "".join(f"{line}\n" for line in kept))

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or model is None:
            return
        step = state.global_step
        if control.should_training_stop and step < state.max_steps:
            # A cancel, a shutdown or the doctor stops the run: its checkpoint is written at once, unprobed.
            self.sink.event("info", f"probes: not answered at step {step}, where the run stops early", step)
            return
        started = time.perf_counter()
        answers = answer_probes(model, self.tokenizer, self.prompts, max_new_tokens=self.preset.probes.max_new_tokens,
                                chat_template=self.preset.data.chat_template, system_prompt=self.preset.data.system_prompt)
        now = time.time()
        lines = [json.dumps({"step": step, "probe": index, **answer, "time": now}, ensure_ascii=False)
                 for index, answer in enumerate(answers)]
        with self.artifacts.probes_file.open("a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        seconds = time.perf_counter() - started
        self.seconds[step] = seconds
        self.sink.metrics(step, {"probe_s": seconds})
        self.sink.event("info", f"probes: {len(answers)} answer(s) at step {step} in {seconds:.2f} s", step)


def add_probes(trainer, preset: TrainPreset, artifacts: RunArtifacts, sink: Sink, tokenizer) -> ProbeCallback | None:
    """Give the trainer a ProbeCallback when the preset names probes; EngineError for an unreadable probe file."""
    from presets.probes import ProbeFileError, probe_prompts

    try:
        prompts = probe_prompts(preset.probes)
    except ProbeFileError as exc:
        raise EngineError(f"probes.file: {exc}", "fix the probe file (one prompt a line in .txt, or a JSON list of strings)") from None
    if not prompts:
        return None
    if trainer.args.world_size > 1:
        if trainer.is_world_process_zero():
            sink.event("info", f"probes: not answered under distributed training ({trainer.args.world_size} processes): "
                               "the main process cannot generate alone with a sharded model; chat with a checkpoint instead")
        return None
    callback = ProbeCallback(preset, artifacts.run_dir, sink, tokenizer, prompts)
    trainer.add_callback(callback)  # after the engine's callback: the checkpoint is recorded before its answers
    return callback
