"""From a train preset to trained weights: the one path every run takes.

    tokenizer  ← engine.models.load_tokenizer(preset.model)
    datasets   ← engine.data.build_datasets(preset.data, tokenizer)   (+ the doctor's data findings)
    model      ← engine.models.load_model(preset.model, precision)
    method     ← engine.methods.apply_method(model, preset)
    trainer    ← transformers.Trainer(model, TrainingArguments(preset.training), collator, EngineCallback)
    trainer.train(resume_from_checkpoint)
    final/     ← the adapter (PEFT format) or the full model (safetensors) + tokenizer, written whole or not at all

A checkpoint that does not fit on the disk (checked before each save against the last one's size,
or a save that fails with ENOSPC) ends the run interrupted, with no partial checkpoint left.
The run folder's layout is engine/artifacts.py's. Metrics go to the caller's sink and, always, to
the run's metrics.jsonl.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from engine.artifacts import (
    RunArtifacts, checkpoint_space_needed, disk_space, folder_bytes, human_bytes, is_disk_full, resolve_resume,
    write_atomic,
)
from engine.errors import DataError, EngineError
from engine.kernels import LIGER_LOSS, PLAIN_LOSS, kernel_choice, optimizer_name
from engine.models import attention_for, load_model, load_tokenizer, quiet_libraries, resolve_precision, training_device
from engine.outcome import STATUS_BY_REASON, DiskFull, JobOutcome, Status
from engine.sink import JsonlSink, MultiSink, Sink
from presets import TrainPreset, dump_preset
from presets.methods import METHODS
from presets.stages import STAGES


# A failed save with less than this free is taken for a full disk even when the library's error
# does not say so (torch.save reports only "file write failed").
NEARLY_FULL_BYTES = 1 << 20
MEMORY_ADVICE = (
    "lower training.batch_size (raise training.grad_accum to keep the effective batch), lower data.max_length, "
    "set training.gradient_checkpointing: true, or train a 4-bit base with method qlora"
)


@dataclass(kw_only=True)
class TrainResult(JobOutcome):
    """How a training run ended (status: completed, or why it ended early: cancelled / interrupted
    (resumable) / stopped by the doctor or early stopping), with its figures."""

    run_dir: Path
    global_step: int
    total_steps: int
    final_dir: Path | None = None  # the trained adapter or model; None when the run did not finish
    last_checkpoint: Path | None = None
    best_checkpoint: Path | None = None  # lowest eval loss among the checkpoints on disk
    best_eval_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last value of each metric
    trainable_params: int = 0
    total_params: int = 0
    runtime_s: float = 0.0
    model: Any = field(default=None, repr=False, compare=False)  # the trained model, still in memory


# --------------------------------------------------------------------------- the steps


def world_size() -> int:
    """Processes training together (engine.dist_entry's ranks under accelerate launch), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def steps_per_epoch(train_samples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one pass, counted as the Trainer counts them (last partial batch kept).

    Under distributed training every process takes its own batch each step.
    """
    batches = math.ceil(train_samples / (batch_size * world_size()))
    return max(batches // grad_accum + int(batches % grad_accum > 0), 1)


def total_steps(preset: TrainPreset, train_samples: int) -> int:
    training = preset.training
    if training.max_steps:
        return training.max_steps
    return max(math.ceil(training.epochs * steps_per_epoch(train_samples, training.batch_size, training.grad_accum)), 1)


def _checkpointing_arguments(enabled: bool) -> dict:
    from dataclasses import fields

    from transformers import TrainingArguments

    # transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name warns).
    name = "activation_checkpointing" if any(f.name == "activation_checkpointing" for f in fields(TrainingArguments)) else "gradient_checkpointing"
    # Non-reentrant checkpointing needs no input gradients, so it works for adapters on frozen embeddings.
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def training_arguments(preset: TrainPreset, artifacts: RunArtifacts, *, precision: str, device, steps: int, has_eval: bool,
                       loss: str = "plain"):
    """The preset's training section as the stage's arguments (HF TrainingArguments, or TRL's
    subclass of it for a preference stage); `loss` is engine.kernels' loss path."""
    from engine.stages import stage_arguments

    values = training_argument_values(preset, artifacts, precision=precision, device=device, steps=steps, has_eval=has_eval, loss=loss)
    return stage_arguments(preset, values)


def training_argument_values(preset: TrainPreset, artifacts: RunArtifacts, *, precision: str, device, steps: int,
                             has_eval: bool, loss: str = "plain") -> dict:
    """The preset's training section as TrainingArguments' keyword values."""
    training = preset.training
    if "8bit" in training.optimizer or training.optimizer.startswith("paged"):
        from presets.extras import require

        require("bitsandbytes", f"training.optimizer {training.optimizer}")  # before the Trainer fails deep inside
    warmup = training.warmup_steps or math.ceil(training.warmup_ratio * steps)
    if has_eval:
        eval_strategy, eval_steps = ("steps", training.eval_steps) if training.eval_steps else ("epoch", None)
    else:
        eval_strategy, eval_steps = "no", None
    return dict(
        output_dir=str(artifacts.checkpoints_dir),
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        learning_rate=training.lr,
        lr_scheduler_type=training.scheduler,
        warmup_steps=warmup,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        optim=optimizer_name(training.optimizer, device_is_cuda=device.type == "cuda"),
        # transformers' Liger integration patches the model at train(): fused linear cross-entropy,
        # RMSNorm, RoPE and SwiGLU, each where the architecture has it (Liger's defaults).
        use_liger_kernel=loss == LIGER_LOSS,
        torch_compile=training.compile,
        # Under FSDP, FSDP's own activation checkpointing does it (engine.distributed.configs).
        **_checkpointing_arguments(training.gradient_checkpointing and preset.distributed.strategy != "fsdp"),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        seed=training.seed,
        logging_strategy="steps",
        logging_steps=training.logging_steps,
        # A NaN loss must reach the sink and the doctor, not be replaced by the running mean.
        logging_nan_inf_filter=False,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy="steps" if training.save_steps else "epoch",
        save_steps=training.save_steps or 500,
        save_total_limit=None,  # the callback's keep policy prunes, and tells the sink
        # Trackers get the Trainer's logs beside (never instead of) the sink; tracker_environment
        # points their files into the run folder.
        report_to=list(training.report_to) or "none",
        run_name=artifacts.run_dir.name,
        project=TRACKER_PROJECT,
        disable_tqdm=True,
        # Our collator yields exactly the model's inputs; the column filter would drop position_ids of packed rows.
        remove_unused_columns=False,
        label_names=["labels"],  # peft wrappers hide the forward signature the Trainer would read it from
        # Counted by the callback on the device; the Trainer's own count reads it back every step.
        include_num_input_tokens_seen="no",
        dataloader_pin_memory=device.type == "cuda",
        # Distributed runs (engine.dist_entry): the preset's backend; auto = nccl on GPU, gloo on CPU.
        ddp_backend=None if preset.distributed.backend == "auto" else preset.distributed.backend,
        # Every trainable parameter takes part in each forward pass (frozen ones need no gradient):
        # DDP need not search the graph for unused ones at every step.
        ddp_find_unused_parameters=False,
        # NEFTune: noise on the input embeddings in training mode only (evaluation and the saved model see none).
        neftune_noise_alpha=training.neftune_noise_alpha,
    )


TRACKER_PROJECT = "tunebench"


@contextlib.contextmanager
def tracker_environment(preset: TrainPreset, artifacts: RunArtifacts):
    """The environment the Trainer's trackers read, set for one run and restored after it.

    Offline by default, files in the run folder: TensorBoard event files in tensorboard/, W&B in
    wandb/ (offline unless WANDB_MODE says otherwise), an MLflow file store in mlruns/ (unless
    MLFLOW_TRACKING_URI names a server), Trackio's database in trackio/ (unless TRACKIO_DIR is set).
    """
    run_dir = artifacts.run_dir.resolve()
    chosen = set(preset.training.report_to)
    forced, defaults = {}, {}
    if "tensorboard" in chosen:
        forced["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")
    if "wandb" in chosen:
        forced["WANDB_DIR"] = str(run_dir)
        defaults.update(WANDB_MODE="offline", WANDB_PROJECT=TRACKER_PROJECT)
    if "mlflow" in chosen:
        defaults.update(MLFLOW_TRACKING_URI=(run_dir / "mlruns").as_uri(), MLFLOW_EXPERIMENT_NAME=TRACKER_PROJECT)
    if "trackio" in chosen:
        defaults["TRACKIO_DIR"] = str(run_dir / "trackio")
    values = forced | {key: value for key, value in defaults.items() if key not in os.environ}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def engine_trainer(base):
    """The stage's trainer class (HF's Trainer or a TRL preference trainer) with tunebench's own
    duties mixed in."""
    from engine.methods import converts_saved_adapters, load_adapter_weights, save_adapter

    class EngineTrainer(base):
        """`base`, with each micro-batch's tokens counted by the callback (on the device), a
        checkpoint refused before it is written when the disk cannot hold it, and the adapters of
        PiSSA / OLoRA saved as plain LoRA (and read back) by engine.methods."""

        engine_callback = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.engine_callback.count_batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def _save_checkpoint(self, model, trial):
            # Every rank checks (they share the run folder), so all of them stop at this save together.
            artifacts = self.engine_callback.artifacts
            step = self.state.global_step
            check_checkpoint_space(artifacts, step)
            try:
                super()._save_checkpoint(model, trial)
            except Exception as exc:
                if not _failed_for_space(exc, artifacts, step):
                    raise
                if self.is_world_process_zero():
                    # Never leave a half-written checkpoint-N that looks resumable; removing it also
                    # frees the room the run's records need to say what happened.
                    _remove_partial_checkpoint(artifacts.checkpoint_dir(step))
                raise _disk_full(artifacts, step, partial=True) from exc

        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)
            if self.args.should_save:
                save_adapter(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            model = model if model is not None else self.model
            if converts_saved_adapters(model):
                load_adapter_weights(model, resume_from_checkpoint)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    EngineTrainer.__name__ = EngineTrainer.__qualname__ = f"Engine{base.__name__}"
    return EngineTrainer


# --------------------------------------------------------------------------- files


def _clean_leftovers(artifacts: RunArtifacts) -> None:
    """Folders a crash left behind: half-written final/ or checkpoints, interrupted deletions."""
    for stale in artifacts.run_dir.glob(".final-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if artifacts.checkpoints_dir.is_dir():
        complete = set(artifacts.checkpoints().values())
        for child in artifacts.checkpoints_dir.iterdir():
            if child.is_dir() and child not in complete:
                shutil.rmtree(child, ignore_errors=True)


def _last_checkpoint_bytes(artifacts: RunArtifacts, before_step: int) -> tuple[int, int] | None:
    """(step, bytes) of the newest whole checkpoint before `before_step`, if there is one."""
    earlier = [step for step in artifacts.checkpoints() if step < before_step]
    if not earlier:
        return None
    step = max(earlier)
    return step, folder_bytes(artifacts.checkpoint_dir(step))


def check_checkpoint_space(artifacts: RunArtifacts, step: int) -> None:
    """DiskFull, before anything is written, when the last checkpoint's size (plus a margin) is not free."""
    last = _last_checkpoint_bytes(artifacts, step)
    if last is None:  # the first save: nothing to measure a checkpoint by yet
        return
    if disk_space(artifacts.checkpoints_dir).free < checkpoint_space_needed(last[1]):
        raise _disk_full(artifacts, step, partial=False)


def _failed_for_space(exc: BaseException, artifacts: RunArtifacts, step: int) -> bool:
    """Whether a save failed because its filesystem is full, by the error or by the space left."""
    if is_disk_full(exc):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    try:
        free = disk_space(artifacts.checkpoints_dir).free
    except OSError:
        return False
    last = _last_checkpoint_bytes(artifacts, step)
    return free < max(checkpoint_space_needed(last[1]) if last else 0, NEARLY_FULL_BYTES)


def _remove_partial_checkpoint(path: Path) -> None:
    if not path.exists():
        return
    doomed = path.with_name(f".deleting-{path.name}")  # out of the way first: a crash leaves no checkpoint-N
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _disk_full(artifacts: RunArtifacts, step: int, *, partial: bool) -> DiskFull:
    """What a full disk did to the run: which filesystem, how much is free, what a checkpoint needs."""
    try:
        space = disk_space(artifacts.checkpoints_dir)
        where, mount = space.describe(), str(space.mount)
    except OSError:
        where = mount = f"the filesystem holding {artifacts.checkpoints_dir}"
    last = _last_checkpoint_bytes(artifacts, step)
    if last is None:
        needs, then = "no checkpoint of this run is whole yet", "then run it again"
    else:
        needs = (f"a checkpoint of this run takes {human_bytes(last[1])} (checkpoint-{last[0]}; "
                 f"{human_bytes(checkpoint_space_needed(last[1]))} with margin)")
        then = f"then resume the run: it continues from checkpoint-{last[0]}"
    what = (f"the disk filled up while checkpoint-{step} was written (the partial one was removed)" if partial
            else f"checkpoint-{step} would not fit on the disk, so nothing was written")
    return DiskFull(
        f"{what}: {where}; {needs}",
        f"free space on {mount} (delete checkpoints or runs you no longer need), keep fewer checkpoints "
        f"(lower training.keep_last) or save less often (raise training.save_steps); {then}",
    )


def check_max_length(preset: TrainPreset, config) -> None:
    """data.max_length past the positions the model has: refused, quoting the model's own figure
    (the schema bounds it only loosely: it cannot know the model)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text_config, "max_position_embeddings", None)
    if isinstance(limit, int) and preset.data.max_length > limit:
        raise EngineError(
            f"data.max_length is {preset.data.max_length}, but {preset.model.path} has positions for "
            f"{limit} tokens (max_position_embeddings in its config.json)",
            f"set data.max_length to {limit} or less",
        )


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """Put a checkpoint's trained weights (adapter or full model) into the in-memory model."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        from engine.methods import load_adapter_weights

        load_adapter_weights(model, checkpoint)
    else:
        from transformers.trainer_utils import load_sharded_checkpoint

        if (checkpoint / "model.safetensors").is_file():
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(checkpoint / "model.safetensors"), device=str(model.device)), strict=False)
        else:
            load_sharded_checkpoint(model, str(checkpoint), strict=False)


def save_final(trainer, artifacts: RunArtifacts) -> Path:
    """Write the result beside final/ and swap it in, so final/ is always whole.

    Every rank calls save_model (FSDP and ZeRO-3 gather the weights together) into the same
    folder; the main process writes it and swaps it in.
    """
    main = trainer.is_world_process_zero()
    tmp = artifacts.run_dir / ".final-partial"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # adapter (PEFT format) or full model (safetensors), with the tokenizer
    final = artifacts.final_dir
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle nobody needs to load the result
        from engine.card import write_model_card

        write_model_card(tmp, run_dir=artifacts.run_dir)  # final/ always carries its model card
        old = artifacts.run_dir / ".final-old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- data


def _prepare_data(preset: TrainPreset, tokenizer, sink: Sink, cache_dir: Path | None):
    """The prepared data, from the workspace's cache when another run or `tunebench data` made it.
    Under distributed training every rank calls this: the cache's build lock lets the first one
    prepare and the others wait and load its result."""
    from engine.data import build_datasets
    from engine.data.progress import progress_reporter

    if preset.data.streaming and not preset.training.max_steps:
        raise DataError("data.streaming reads the data while training, so an epoch's length is unknown ahead",
                        "set training.max_steps (optimizer steps to train), or turn data.streaming off")
    progress = progress_reporter(lambda line: sink.event("info", line))
    bundle = build_datasets(preset.data, tokenizer, seed=preset.data.shuffle_seed, cache_dir=cache_dir, progress=progress)
    if bundle.cache_hit:
        sink.event("info", f"data: prepared rows from the cache ({bundle.cache_key})")
    report = bundle.report
    if bundle.chat_template:
        # Saved with the tokenizer in every checkpoint and in final/, so chat and eval render alike.
        tokenizer.chat_template = bundle.chat_template
    for warning in report.warnings:
        sink.event("warning", warning)
    dropped = ", ".join(f"{n} {reason}" for reason, n in report.dropped.items())
    sink.event(
        "info",
        f"data: {report.train_samples} training / {report.eval_samples} validation samples ({report.format}), "
        f"{report.supervised_share:.0%} supervised tokens" + (f"; dropped {dropped}" if dropped else ""),
    )
    from engine.doctor.data_rules import data_findings

    errors = []
    for finding in data_findings(report):
        sink.finding(finding.to_dict())
        if finding.severity == "error":
            errors.append(finding)
    if errors:
        raise DataError("; ".join(f.title for f in errors), " ".join(f.advice for f in errors))
    if not bundle.train:
        raise DataError("no training samples are left after loading", "see `tunebench data PRESET` for what was dropped and why")
    return bundle


def _prepare_preference_data(preset: TrainPreset, tokenizer, sink: Sink):
    """The rendered pairs (or KTO's judged answers) of a preference stage, with the report said out loud."""
    from engine.data.preference import build_preference_datasets
    from engine.data.progress import progress_reporter

    bundle = build_preference_datasets(preset, tokenizer, seed=preset.data.shuffle_seed,
                                       progress=progress_reporter(lambda line: sink.event("info", line)))
    if bundle.chat_template:
        tokenizer.chat_template = bundle.chat_template
    for line in bundle.report.lines():
        sink.event("info", f"data: {line}")
    for warning in bundle.report.warnings:
        sink.event("warning", warning)
    if not len(bundle.train):
        raise DataError("no training pairs are left after loading", "see `tunebench data PRESET` for what was dropped and why")
    return bundle


# --------------------------------------------------------------------------- the starting point


@dataclass(frozen=True)
class StartPoint:
    """What the run starts from: the base (model), and an earlier run's adapter trained on, if any."""

    model: Any  # presets ModelConfig: model.path, or the full model model.start_from names
    adapter: Path | None = None


def start_point(preset: TrainPreset) -> StartPoint:
    """model.start_from as paths (the jobs layer has already turned a run id into its result folder)."""
    from engine.artifacts import is_adapter_dir

    if not preset.model.start_from:
        return StartPoint(preset.model)
    start = Path(preset.model.start_from).expanduser()
    if not start.is_dir():
        raise EngineError(f"model.start_from {preset.model.start_from} is not a folder",
                          "name a run id (from `tunebench ls`), an adapter folder or a model folder")
    if is_adapter_dir(start):
        return StartPoint(preset.model, start)
    if not (start / "config.json").is_file():
        raise EngineError(f"model.start_from {start} holds neither an adapter (adapter_config.json) nor a model (config.json)",
                          "name a run's final/ folder, a checkpoint folder, or a model folder")
    return StartPoint(preset.model.model_copy(update={"path": str(start), "start_from": None}))


def continue_from_adapter(model, adapter: Path, preset: TrainPreset, sink: Sink, *, total_steps: int):
    """An adapter method trains the earlier adapter on; full and freeze fold it into the weights first."""
    from peft import PeftModel

    from engine.methods import apply_method

    if METHODS[preset.method.name].is_adapter:
        sink.event("info", f"start: training on the adapter in {adapter} (its own rank and targets; method.lora is not read)")
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    sink.event("info", f"start: the adapter in {adapter} merged into the base, then {preset.method.name}")
    return apply_method(PeftModel.from_pretrained(model, str(adapter)).merge_and_unload(), preset, total_steps=total_steps)


def _with_start(model, start: StartPoint, preset: TrainPreset):
    """A frozen copy of what training starts from (the reference of full and freeze runs)."""
    if start.adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(start.adapter)).merge_and_unload()


# --------------------------------------------------------------------------- the run


def train(preset: TrainPreset, run_dir: str | Path, sink: Sink, *, resume_from: str | Path | None = None) -> TrainResult:
    """Train as the preset says, writing the run folder; EngineError (with advice) on a user-facing failure.

    The run's metrics.jsonl always receives everything the given sink receives. The caller closes
    its own sink. A stop requested through `sink.should_stop()` saves a checkpoint and returns.
    """
    artifacts = RunArtifacts(Path(run_dir))
    artifacts.run_dir.mkdir(parents=True, exist_ok=True)
    # Under engine.dist_entry every rank trains; only the main one writes the run's files.
    main = is_main_process()
    if main:
        write_atomic(artifacts.preset_file, dump_preset(preset))
    jsonl = JsonlSink(artifacts.metrics_file) if main else None
    sinks = MultiSink(sink, jsonl)
    try:
        with tracker_environment(preset, artifacts):
            return _train(preset, artifacts, sinks, resume_from)
    except EngineError as exc:
        sinks.event("error", str(exc))
        raise
    except Exception as exc:  # a bug or an environment fault: recorded, then raised with its traceback
        sinks.event("error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if jsonl is not None:
            jsonl.close()


def _train(preset: TrainPreset, artifacts: RunArtifacts, sink: Sink, resume_from) -> TrainResult:
    import torch
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from engine.callback import EngineCallback
    from engine.data import make_collator
    from engine.methods import apply_method, loraplus_optimizer, trainable_parameters
    from engine.stages import TRAINERS, describe_reference, reference_model

    started = time.perf_counter()
    quiet_libraries()
    _clean_leftovers(artifacts)
    checkpoint = resolve_resume(resume_from, artifacts) if resume_from else None
    device = training_device()
    precision = resolve_precision(preset.training.precision, device)
    stage = STAGES[preset.stage]
    if stage.is_preference:
        loss, why = PLAIN_LOSS, f"TRL's {stage.label} loss"
    else:
        # Before the data is prepared: a `liger` this machine cannot run fails at once.
        loss, why = kernel_choice(preset, device.type == "cuda")
    sink.event("info", f"loss: {loss} ({why})")
    set_seed(preset.training.seed)
    if preset.training.optimizer.startswith("paged") and device.type != "cuda":
        sink.event("info", f"{preset.training.optimizer} pages optimizer state only on CUDA; on the CPU bitsandbytes runs it unpaged")

    sink.event("info", f"loading tokenizer and data ({preset.model.path})")
    tokenizer = load_tokenizer(preset.model)
    from engine.data.cache import cache_dir_for

    if stage.is_preference:
        bundle = _prepare_preference_data(preset, tokenizer, sink)
        train_rows = len(bundle.train)
    else:
        bundle = _prepare_data(preset, tokenizer, sink, cache_dir_for(artifacts.run_dir))
        # A streamed dataset has no length: data.streaming needs training.max_steps (checked in _prepare_data).
        train_rows = bundle.report.train_samples if preset.data.streaming else len(bundle.train)
    steps = total_steps(preset, train_rows)

    # Before the model: under ZeRO-3 and FSDP the arguments set up the process group and the
    # sharded loading (zero.Init / meta-device ranks) that from_pretrained then uses.
    has_eval = bool(bundle.eval)
    args = training_arguments(preset, artifacts, precision=precision, device=device, steps=steps, has_eval=has_eval, loss=loss)

    sink.event("info", f"loading model on {device} ({precision})")
    method = preset.method.name
    # The kernel goes with the batch layout: the collator below lays packed batches out for it.
    attention, why = attention_for(preset.model, packed=preset.data.packing, device=device)
    sink.event("info", f"attention: {attention} ({why})")
    start = start_point(preset)
    load = partial(load_model, start.model, precision=precision, trains_base_weights=METHODS[method].trains_base_weights,
                   attn_implementation=attention)
    model = load(for_training=True)
    check_max_length(preset, model.config)
    set_seed(preset.training.seed)  # adapter initialisation does not depend on how loading used the RNG
    if start.adapter is not None:
        model = continue_from_adapter(model, start.adapter, preset, sink, total_steps=steps)
    else:
        model = apply_method(model, preset, total_steps=steps)
    trainable, total = trainable_parameters(model)
    if trainable == 0:
        raise EngineError(f"method {method} leaves no parameter to train", "check method.freeze (trainable_layers / trainable_modules) or pick another method")

    callback = EngineCallback(
        preset, artifacts.run_dir, sink, device=device,
        run_info=dict(
            trainable_params=trainable, total_params=total, train_samples=train_rows,
            eval_samples=len(bundle.eval or []), method=method, precision=precision, device=str(device),
        ),
    )
    row = TRAINERS[preset.stage]
    inputs: dict[str, Any] = dict(model=model, args=args, train_dataset=bundle.train, eval_dataset=bundle.eval or None,
                                  processing_class=tokenizer, callbacks=[callback])
    if stage.is_preference:
        # TRL's trainers tokenize the rendered pairs and batch them with their own collators.
        if row.takes_ref_model:
            inputs["ref_model"] = reference_model(preset, lambda: _with_start(load(for_training=False), start, preset))
    else:
        inputs["data_collator"] = make_collator(tokenizer, packing=preset.data.packing, max_length=preset.data.max_length,
                                                attn_implementation=attention)
    trainer = engine_trainer(row.trainer_class())(**inputs)
    # None unless method.lora.loraplus_lr_ratio; set here because TRL's constructors do not take it.
    trainer.optimizer_cls_and_kwargs = loraplus_optimizer(preset, args)
    trainer.engine_callback = callback
    if stage.reference == "needed":
        sink.event("info", "reference: " + describe_reference(trainer, preset, start))
    # The sink is the run's output: no tqdm bar, no printed log dicts.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    from engine.sample_loss import attach_sample_losses

    attach_sample_losses(trainer, preset, artifacts.run_dir, sink, bundle, tokenizer)  # `tunebench samples`
    from engine.probes import add_probes

    add_probes(trainer, preset, artifacts, sink, tokenizer)  # answers at every save (`tunebench probes`)

    disk_full: DiskFull | None = None
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except DiskFull as exc:
        disk_full = exc
        sink.event("error", exc.message, trainer.state.global_step)
    except torch.cuda.OutOfMemoryError:
        step = trainer.state.global_step
        del trainer, model
        gc.collect()
        torch.cuda.empty_cache()
        raise EngineError(
            f"CUDA out of memory at step {step} (batch_size {preset.training.batch_size}, max_length {preset.data.max_length})",
            MEMORY_ADVICE,
        ) from None

    reason = "disk_full" if disk_full else callback.stop_reason
    status: Status = "completed" if reason is None else STATUS_BY_REASON.get(reason, "stopped")
    best = callback.best_checkpoint()
    final_dir = None
    if status == "completed" or reason == "early_stop":
        if preset.training.load_best_at_end and best is not None and best[0] != trainer.state.global_step:
            load_checkpoint_weights(trainer.model, artifacts.checkpoint_dir(best[0]))
            sink.event("info", f"loaded the best checkpoint (step {best[0]}, eval loss {best[1]:.4f}) as the result")
        final_dir = save_final(trainer, artifacts)
        sink.event("info", f"saved the result to {final_dir}")
    else:
        sink.event("warning", f"run ended early ({reason}) at step {trainer.state.global_step}; no final result written")

    return TrainResult(
        status=status,
        run_dir=artifacts.run_dir,
        global_step=trainer.state.global_step,
        total_steps=trainer.state.max_steps,
        final_dir=final_dir,
        stop_reason=reason,
        error=disk_full.message if disk_full else None,
        advice=disk_full.advice if disk_full else None,
        last_checkpoint=artifacts.latest_checkpoint(),
        best_checkpoint=artifacts.checkpoint_dir(best[0]) if best else None,
        best_eval_loss=best[1] if best else None,
        metrics=dict(callback.latest),
        trainable_params=trainable,
        total_params=total,
        runtime_s=time.perf_counter() - started,
        model=trainer.model,
    )
