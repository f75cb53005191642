"""From "run X, checkpoint N" to paths: what an eval or merge job actually loads.

A run's frozen preset names its base model and data; its folder (engine/artifacts.py) holds the
result in final/ and checkpoints in checkpoints/checkpoint-<step>/. An EvalPreset or MergePreset
that names `run` (id, unique id prefix or name) and optionally `checkpoint` is resolved here into
an equivalent preset with explicit paths, which is what engine.evaluate.run_eval and
engine.merge.run_merge take. Explicit fields of the preset win over the run's.

The jobs worker calls resolve_eval_preset / resolve_merge_preset right before the engine; the CLI
and the TUI call eval_preset_for_run / merge_preset_for_run to build a preset from a run, and
chat_target / path_target for what the chat pane and `tunebench chat` compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.store import Run, RunNotFound, Store, open_store
from jobs.workspace import Workspace, resolve_workspace
from presets.errors import TunebenchError
from presets.methods import METHODS
from presets.schema import DataConfig, EvalPreset, MergePreset, ModelConfig, TrainPreset

EVALS_DIR = "evals"
MERGED_DIR = "merged"


class TargetError(TunebenchError, ValueError):
    """A run or checkpoint that cannot be evaluated, merged or chatted with as asked; the message
    says what to do.

    The worker turns it into a failed job with this text; the CLI prints it without a traceback,
    the TUI shows it as it is.
    """


@dataclass(frozen=True)
class RunTarget:
    run: Run
    run_dir: Path
    train_preset: TrainPreset
    checkpoint: int | None  # None: the final result
    weights_dir: Path  # the adapter, or the full model of a full / freeze run
    is_adapter: bool

    @property
    def base_model(self) -> ModelConfig:
        return self.train_preset.model

    @property
    def data(self) -> DataConfig:
        return self.train_preset.data

    @property
    def method(self) -> str:
        return self.train_preset.method.name


# --------------------------------------------------------------------------- arguments


def _context(preset, workspace, store: Store | None) -> tuple[Store, Workspace]:
    ws = workspace if isinstance(workspace, Workspace) else resolve_workspace(workspace)
    return store or open_store(ws), ws


# --------------------------------------------------------------------------- runs and checkpoints


def _train_preset(run: Run, ws: Workspace) -> TrainPreset:
    from presets import PresetError, load_preset_text

    try:
        preset = load_preset_text(run.preset_yaml, str(ws.run_dir(run.id) / "preset.yaml"))
    except PresetError as exc:
        raise TargetError(f"run {run.id}: its frozen preset no longer validates ({exc.problems[0]})") from None
    if preset.kind != "train":
        raise TargetError(f"run {run.id} is a {preset.kind} job, not a training run: give the run it {preset.kind}d, or name paths (model:, adapter:) in the preset")
    return preset


def checkpoint_dirs(store: Store, ws: Workspace, run_id: str) -> dict[int, Path]:
    """Complete checkpoints on disk by step, from the run folder and the store's rows."""
    from engine.artifacts import RunArtifacts

    found = {row.step: Path(row.path) for row in store.list_checkpoints(run_id)
             if (Path(row.path) / "trainer_state.json").is_file()}
    found.update(RunArtifacts(ws.run_dir(run_id)).checkpoints())
    return dict(sorted(found.items()))


def run_target(store: Store, ws: Workspace, ref: str, checkpoint: int | None = None) -> RunTarget:
    """The weights a run reference points at: its final result, or the checkpoint at `checkpoint`."""
    from engine.artifacts import RunArtifacts, is_adapter_dir

    try:
        run = store.resolve_run(ref)
    except RunNotFound as exc:
        raise TargetError(str(exc)) from None
    preset = _train_preset(run, ws)
    artifacts = RunArtifacts(ws.run_dir(run.id))
    if checkpoint is None:
        weights = artifacts.final_dir
        if not weights.is_dir():
            steps = ", ".join(str(s) for s in checkpoint_dirs(store, ws, run.id)) or "none"
            raise TargetError(
                f"run {run.id} ({run.state}) has no final result in {weights}; "
                f"pick a checkpoint with --checkpoint STEP (its checkpoints: {steps})"
            )
    else:
        available = checkpoint_dirs(store, ws, run.id)
        if checkpoint not in available:
            steps = ", ".join(str(s) for s in available) or "none"
            raise TargetError(f"run {run.id} has no checkpoint at step {checkpoint}; its checkpoints: {steps}")
        weights = available[checkpoint]
    return RunTarget(run, artifacts.run_dir, preset, checkpoint, weights, is_adapter_dir(weights))


def result_choices(store: Store, ws: Workspace, ref: str) -> tuple[str, list[int], bool]:
    """(run id, checkpoint steps on disk, has a final result): what a run offers to compare."""
    from engine.artifacts import RunArtifacts

    try:
        run = store.resolve_run(ref)
    except RunNotFound as exc:
        raise TargetError(str(exc)) from None
    final = RunArtifacts(ws.run_dir(run.id)).final_dir.is_dir()
    return run.id, list(checkpoint_dirs(store, ws, run.id)), final


# --------------------------------------------------------------------------- chat


@dataclass
class ChatTarget:
    """Everything ChatSession.load needs, resolved from a run (or from a base and an adapter folder)."""

    base: str
    target: str | None
    compare_to: str | None = None
    run_id: str | None = None
    checkpoint: int | None = None
    model_config: ModelConfig | None = None  # the run's (quantisation, dtype, trust_remote_code)
    data_config: DataConfig | None = None  # the run's (its validation split feeds the probe set)
    chat_template: str | None = None
    system_prompt: str | None = None
    labels: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        left = self.labels[0] if self.labels else "base"
        right = self.labels[1] if self.labels else "fine-tuned"
        where = f"run {self.run_id}" if self.run_id else self.base
        return f"{left} vs {right} ({where})"


def chat_target(ws: Workspace, run_ref: str, *, checkpoint: int | None = None,
                compare: str | int | None = None) -> ChatTarget:
    """Resolve a run (id, prefix or name) into its base model, the result to compare and its chat
    settings. `checkpoint`: a step instead of the final result; `compare`: a step for the left side
    (two checkpoints of one run) instead of the base. A run with no final result yet (still
    training) falls back to its latest checkpoint."""
    store = open_store(ws)
    notes = []
    try:
        right = run_target(store, ws, run_ref, checkpoint)
    except TargetError:
        if checkpoint is not None:
            raise
        try:
            run = store.resolve_run(run_ref)
        except RunNotFound as exc:
            raise TargetError(str(exc)) from None
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
    if right.run.kind != "train":
        raise TargetError(f"run {right.run.id} is a {right.run.kind} run; chat compares the result of a train run")

    def label(target: RunTarget) -> str:
        return "fine-tuned" if target.checkpoint is None else f"checkpoint-{target.checkpoint}"

    preset = right.train_preset
    return ChatTarget(
        base=preset.model.path, target=str(right.weights_dir), compare_to=str(left.weights_dir) if left else None,
        run_id=right.run.id, checkpoint=right.checkpoint, model_config=preset.model, data_config=preset.data,
        chat_template=preset.data.chat_template, system_prompt=preset.data.system_prompt,
        labels=(label(left) if left else "base", label(right)), notes=notes,
    )


def path_target(base: str | None, adapter: str | None) -> ChatTarget:
    """A base model folder and an adapter (or fine-tuned model) folder, without a run: the
    adapter's recorded base when `base` is left out."""
    from engine.artifacts import adapter_base_model

    if adapter and not Path(adapter).is_dir():
        raise TargetError(f"--adapter {adapter}: no such folder")
    if base is None and adapter:
        base = adapter_base_model(adapter)
        if not base:
            raise TargetError(f"--adapter {adapter} records no base model: pass --base PATH")
    if base is None:
        raise TargetError("say what to compare: --run RUN, or --base PATH [--adapter PATH]")
    return ChatTarget(base=base, target=adapter)


# --------------------------------------------------------------------------- eval


def resolve_eval_preset(preset: EvalPreset, workspace, *, store: Store | None = None) -> EvalPreset:
    """An EvalPreset with model, adapter and data filled in from its run (unchanged without a run)."""
    store, ws = _context(preset, workspace, store)
    if preset.run is None:
        return preset
    target = run_target(store, ws, preset.run, preset.checkpoint)
    return preset.model_copy(update={
        "run": target.run.id,
        "model": preset.model or target.base_model,
        "adapter": preset.adapter or str(target.weights_dir),
        "data": preset.data or target.data,
        "stage": preset.stage or target.train_preset.stage,
    })


def resolve_train_preset(preset: TrainPreset, workspace, *, store: Store | None = None) -> TrainPreset:
    """A TrainPreset whose model.start_from names a run turned into that run's result folder
    (unchanged when it names a folder, or nothing)."""
    start = preset.model.start_from
    if not start or Path(start).is_dir():
        return preset
    store, ws = _context(preset, workspace, store)
    target = run_target(store, ws, start)
    if target.is_adapter and target.base_model.path != preset.model.path:
        raise TargetError(
            f"model.start_from {start}: run {target.run.id} trained an adapter on {target.base_model.path}, "
            f"but this preset's model.path is {preset.model.path}",
            f"set model.path: {target.base_model.path} (an adapter only fits the base it was trained on)",
        )
    return preset.model_copy(update={"model": preset.model.model_copy(update={"start_from": str(target.weights_dir)})})


def preference_before_after(workspace, ref: str, *, store: Store | None = None) -> dict:
    """How a preference run's starting point (model.start_from, else its base) and its result rank
    its validation pairs: preference accuracy and mean margin of each (the demo's before / after)."""
    import tempfile

    from engine.evaluate import run_eval

    store, ws = _context(None, workspace, store)
    target = run_target(store, ws, ref)
    if target.train_preset.stage == "sft":
        raise TargetError(f"run {target.run.id} trained stage sft: it has no pairs to rank", "give a dpo, orpo, kto or simpo run")
    preset = resolve_train_preset(target.train_preset, ws, store=store)
    base = preset.model.model_copy(update={"start_from": None})
    scores: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tunebench-rank-") as tmp:
        for side, weights in (("start", preset.model.start_from), ("result", str(target.weights_dir))):
            evaluation = EvalPreset(name=f"{target.run.name}-{side}", model=base, adapter=weights, data=preset.data,
                                    stage=preset.stage, compare_base=False)
            details = run_eval(evaluation, Path(tmp) / side).details
            scores[side] = details["preference"][details["sides"][-1]]
    return {"run": target.run.id, "pairs": scores["result"]["pairs"], **scores}


def eval_preset_for_run(store: Store, ws: Workspace, ref: str, *, checkpoint: int | None = None,
                        samples: int | None = None, data_file: str | None = None, max_new_tokens: int | None = None,
                        compare_base: bool = True) -> EvalPreset:
    """The eval preset `tunebench eval RUN` queues: the run's base, weights and validation split.

    `data_file`: evaluate on every row of this file instead (read with the run's data settings).
    """
    target = run_target(store, ws, ref, checkpoint)  # fail now, not in the queue
    fields: dict[str, Any] = {"name": f"eval-{target.run.name}", "run": target.run.id, "checkpoint": checkpoint,
                              "compare_base": compare_base, "stage": target.train_preset.stage}
    if samples is not None:
        fields["num_samples"] = samples
    if max_new_tokens is not None:
        fields["max_new_tokens"] = max_new_tokens
    if data_file is not None:
        path = Path(data_file).expanduser().resolve()
        if not path.is_file():
            raise TargetError(f"--data {data_file}: no such file")
        fields["data"] = target.data.model_copy(update={"train_files": [str(path)], "val_files": [], "val_ratio": 0.0, "max_samples": None})
    return EvalPreset(**fields)


# --------------------------------------------------------------------------- merge


def _check_mergeable(target: RunTarget) -> None:
    if not target.is_adapter:
        raise TargetError(
            f"run {target.run.id} trained with method {target.method}: {target.weights_dir} is a full model, there is no adapter to merge; "
            f"`tunebench export {target.run.id}` copies it"
        )
    refusal = METHODS[target.method].merge_refusal if target.method in METHODS else None
    if refusal:
        raise TargetError(f"run {target.run.id} trained {target.method}: {refusal}")


def resolve_merge_preset(preset: MergePreset, workspace, *, store: Store | None = None) -> MergePreset:
    """A MergePreset with the run's adapter and base filled in (unchanged without a run)."""
    store, ws = _context(preset, workspace, store)
    if preset.run is None:
        return preset
    if preset.method != "adapter":
        raise TargetError(f"run: is for adapter merges; a {preset.method} merge lists its models: with paths")
    target = run_target(store, ws, preset.run, preset.checkpoint)
    _check_mergeable(target)
    return preset.model_copy(update={
        "run": target.run.id,
        "adapter": preset.adapter or str(target.weights_dir),
        "base_model": preset.base_model or target.base_model.path,
    })


def merge_preset_for_run(store: Store, ws: Workspace, ref: str, *, checkpoint: int | None = None,
                         dtype: str | None = None, output: str | None = None) -> MergePreset:
    """The adapter-merge preset `tunebench merge RUN` queues."""
    target = run_target(store, ws, ref, checkpoint)
    _check_mergeable(target)
    fields: dict[str, Any] = {"name": f"merge-{target.run.name}", "method": "adapter", "run": target.run.id, "checkpoint": checkpoint}
    if dtype:
        fields["dtype"] = dtype
    if output:
        fields["output"] = str(Path(output).expanduser().resolve())
    return MergePreset(**fields)


# --------------------------------------------------------------------------- outputs and results


def eval_output_dir(ws: Workspace, preset: EvalPreset, job_id: str) -> Path:
    """runs/<evaluated run>/evals/<eval job id>/, or the job's own folder when no run is named."""
    if preset.run:
        return ws.run_dir(preset.run) / EVALS_DIR / job_id
    return ws.run_dir(job_id) / EVALS_DIR


def merge_output_dir(ws: Workspace, preset: MergePreset, job_id: str) -> Path:
    """preset.output, else runs/<merged run>/merged/<merge job id>/, else the job's own folder."""
    if preset.output:
        return Path(preset.output)
    if preset.run:
        return ws.run_dir(preset.run) / MERGED_DIR / job_id
    return ws.run_dir(job_id) / MERGED_DIR


def eval_results_for(store: Store, run_id: str) -> list:
    """Evaluation results about a run: stored under its id, or under an eval job that targeted it."""
    rows = []
    for row in store.eval_results(None):
        payload = row.payload if isinstance(row.payload, dict) else {}
        if row.run_id == run_id or payload.get("target_run") == run_id:
            rows.append(row)
    return rows


def merged_models_for(ws: Workspace, run_id: str) -> list[Path]:
    """Finished merged models of a run (a merge_report.json marks a complete folder)."""
    folder = ws.run_dir(run_id) / MERGED_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "merge_report.json").is_file())


@dataclass(frozen=True)
class EvalRecord:
    created_at: float
    results: dict  # engine.evaluate's results (status, target, dataset, loss, generation, samples, …)
    out_dir: str | None
    job_id: str | None


def eval_history(store: Store, ws: Workspace, run_id: str) -> list[EvalRecord]:
    """A run's evaluations, oldest first: the store's results, plus results.json files under
    runs/<id>/evals/ that no stored result points at (written by a job whose row was removed)."""
    import json

    records, seen = [], set()
    for row in eval_results_for(store, run_id):
        payload = row.payload if isinstance(row.payload, dict) else {}
        results = payload.get("result", payload)
        if not isinstance(results, dict):
            continue
        out_dir = payload.get("out_dir")
        seen.add(str(out_dir))
        job = row.run_id if row.run_id != run_id else None
        records.append(EvalRecord(row.created_at, results, out_dir, job))
    folder = ws.run_dir(run_id) / EVALS_DIR
    if folder.is_dir():
        for results_file in sorted(folder.glob("*/results.json")):
            if str(results_file.parent) in seen:
                continue
            try:
                results = json.loads(results_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            records.append(EvalRecord(results_file.stat().st_mtime, results, str(results_file.parent), results_file.parent.name))
    return sorted(records, key=lambda r: r.created_at)
