"""The Trainer callback that connects a run to its sink, its doctor and its keep policy.

Values cross from the device to the host only at logging steps: per step the callback adds the
batch's token count to a device tensor (no sync) and checks `sink.should_stop()` (a host-side
call). At each logging step it hands loss, grad_norm, lr, epoch, throughput (on CUDA also TFLOP/s
and MFU, engine.flops) and memory to the sink and the live doctor; at each evaluation eval_loss and
perplexity; at each save the checkpoint, after which the keep policy (last N + best by eval loss)
prunes the rest and the doctor looks at the free space left for the next ones.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from engine.artifacts import RunArtifacts, disk_space, folder_bytes
from engine.distributed.rank import agree_on_stop
from engine.doctor.live import LiveDoctor
from engine.flops import compute_dtype, flops_per_token, mfu, peak_flops
from engine.metering import memory_metrics
from engine.sink import Sink
from presets.methods import METHODS
from presets.schema import TrainPreset
from presets.stages import PREFERENCE_METRICS

_EVAL_NOISE = 1e-6  # an eval loss must improve by more than this to count as better
# A test hook (jobs.control.submit(park_at_step=N) sets it): training waits after step N, its
# logging and checkpoint done, until a stop is asked for; a cancel, SIGTERM or kill then lands at
# a known step instead of racing the training loop.
PARK_AT_STEP_ENV = "TUNEBENCH_TEST_PARK_AT_STEP"
_PARK_POLL_S = 0.05


def checkpoint_eval_loss(path: Path) -> float | None:
    """The eval loss measured at the checkpoint's own step (from its trainer_state.json), if any."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    step = state.get("global_step")
    for entry in reversed(state.get("log_history", [])):
        if entry.get("step") == step and "eval_loss" in entry:
            return float(entry["eval_loss"])
    return None


def _preference_values(logs: dict, prefix: str = "") -> dict[str, float]:
    """The preference stages' metrics TRL adds to its logs (rewards, log-probs, KL), by their TRL names."""
    values = {}
    for name in PREFERENCE_METRICS:
        value = logs.get(prefix + name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[prefix + name] = float(value)
    return values


def remove_checkpoint(path: Path) -> None:
    """Rename first, then delete: a crash halfway leaves no folder that looks like a checkpoint."""
    doomed = path.with_name(f".deleting-{path.name}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


class EngineCallback(TrainerCallback):
    def __init__(self, preset: TrainPreset, run_dir: Path, sink: Sink, *, device, run_info: dict[str, Any]):
        self.preset = preset
        self.artifacts = RunArtifacts(Path(run_dir))
        self.sink = sink
        self.device = device
        self.run_info = run_info
        self.doctor = LiveDoctor(preset, precision=run_info.get("precision"))
        self.reallocates_ranks = METHODS[preset.method.name].reallocates_ranks
        self.park_at_step = int(os.environ[PARK_AT_STEP_ENV]) if os.environ.get(PARK_AT_STEP_ENV) else None
        self._start_step = 0

        self.stop_reason: str | None = None
        self.world_size = 1
        # Distributed runs: a stop decided on rank 0 between step ends (doctor, early stopping)
        # waits here for the next step end, where every rank agrees on it (agree_on_stop).
        self._pending_stop: tuple[str, bool] | None = None
        self.latest: dict[str, float] = {}  # last value of every metric, for the result and the checkpoints
        self.eval_at_step: dict[int, float] = {}
        self.best_eval: float | None = None
        self.evals_without_improvement = 0

        # Counted on the device per step, read at logging steps only.
        self._tokens = None
        self._samples = None
        self._tokens_flushed = 0
        self._samples_flushed = 0
        self._last_log_time = 0.0
        self._last_log_tokens = 0
        self._last_log_samples = 0
        self._excluded_time = 0.0  # evaluation time inside the current logging interval
        self._checkpoint_eval: dict[int, float | None] = {}
        self._model_config = None  # for the FLOPs per token (on_train_begin)
        self._peak: float | None = None  # the GPU's dense peak FLOP/s for the compute dtype

    # ------------------------------------------------------------------ counting (per step, no sync)

    def count_batch(self, inputs: dict) -> None:
        """Called by the trainer for every micro-batch; adds on the device, never reads back."""
        if "input_ids" not in inputs:
            # ORPO / CPO batches: each side is a whole sequence (prompt included) with its own mask.
            sides = [inputs[key] for key in ("chosen_attention_mask", "rejected_attention_mask") if key in inputs]
            self._add(sum(mask.sum() for mask in sides), sum(mask.shape[0] for mask in sides))
            return
        mask = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        positions = inputs.get("position_ids")
        if mask is None and positions is not None:
            # Packed (engine.data.collate): no mask, and each sample restarts its positions at 0. A
            # row's end padding is the one run that starts elsewhere: real tokens are those before it.
            import torch

            starts = torch.diff(positions, dim=-1, prepend=positions[:, :1] - 1) != 1
            padding = (starts & (positions != 0)).cumsum(dim=-1) > 0
            tokens, samples = (~padding).sum(), (positions == 0).sum()
        else:
            tokens = mask.sum() if mask is not None else ids.numel()
            samples = ids.shape[0]
        self._add(tokens, samples)

    def _add(self, tokens, samples) -> None:
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        self._samples = samples if self._samples is None else self._samples + samples

    def _flush_counts(self, state) -> None:
        if self._tokens is not None:
            self._tokens_flushed += int(self._tokens)
            self._samples_flushed += int(self._samples)
            self._tokens = self._samples = None
        # num_input_tokens_seen lives in TrainerState, so it survives a resume with the checkpoint.
        state.num_input_tokens_seen = self._tokens_flushed

    # ------------------------------------------------------------------ stopping

    def _stop(self, control, reason: str, *, save: bool, agreed: bool = False) -> None:
        if self.world_size > 1 and not agreed:
            # Stopping on one rank alone would leave the others waiting in the next collective.
            self._pending_stop = self._pending_stop or (reason, save)
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        control.should_training_stop = True
        control.should_log = True
        if save:
            control.should_save = True

    def _apply_findings(self, step: int, values: dict[str, float], control) -> None:
        for finding in self.doctor.observe(step, values):
            self.sink.finding(finding.to_dict())
            # A stop already under way is not asked for again by the finding's later updates.
            if finding.stop and self.stop_reason is None and self._pending_stop is None:
                self.sink.event("warning", f"stopping: {finding.title}", step)
                # Weights that went non-finite are not worth a checkpoint; the last good one stays.
                finite = all(math.isfinite(self.latest.get(k, 0.0)) for k in ("loss", "grad_norm"))
                self._stop(control, finding.rule, save=finite)

    # ------------------------------------------------------------------ trainer events

    def on_train_begin(self, args, state, control, **kwargs):
        self.world_size = args.world_size
        self._start_step = state.global_step
        self._tokens_flushed = int(state.num_input_tokens_seen or 0)
        self._last_log_tokens = self._tokens_flushed
        self._last_log_time = time.perf_counter()
        # Rebuild the early-stopping history and the checkpoints' eval losses from disk (resume).
        for entry in state.log_history:
            if "eval_loss" in entry:
                self._note_eval(entry["eval_loss"])
                self.eval_at_step[int(entry["step"])] = float(entry["eval_loss"])
        self._checkpoint_eval = {step: checkpoint_eval_loss(path) for step, path in self.artifacts.checkpoints().items()}
        self._model_config = getattr(kwargs.get("model"), "config", None)
        self._peak = self._gpu_peak()
        self.doctor.set_total_steps(state.max_steps)
        if state.is_world_process_zero:
            self.sink.run_started({**self.run_info, "total_steps": state.max_steps, "start_step": state.global_step})

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.reallocates_ranks:
            # AdaLoRA re-allocates ranks from the gradients, after the step and before they are zeroed.
            model.base_model.update_and_allocate(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        # Only a step this attempt trained: a run resumed from that step's checkpoint goes on.
        if state.global_step == self.park_at_step and state.global_step > self._start_step:
            if state.is_world_process_zero:
                self.sink.event("info", f"parked after step {state.global_step} (test hook)", state.global_step)
            # Under several ranks only rank 0 reads stop requests: they ask together, so all leave at once.
            while agree_on_stop(self.sink.should_stop(), True)[0] is None:
                time.sleep(_PARK_POLL_S)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_save or control.should_evaluate:
            self._flush_counts(state)
        # Every rank asks its sink (under engine.dist_entry each rank's sink answers for itself) and
        # the ranks agree, so all of them stop at this same step boundary.
        asked = self.sink.should_stop()
        proposal = self._pending_stop or ((asked, True) if asked else (None, True))
        reason, save = agree_on_stop(*proposal)
        if reason:
            if self._pending_stop is None or reason != self._pending_stop[0]:
                self.sink.event("info", f"stop requested ({reason}): saving a checkpoint at step {state.global_step}", state.global_step)
            self._stop(control, reason, save=save, agreed=True)
            self._flush_counts(state)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        self._flush_counts(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs or not state.is_world_process_zero:
            return  # evaluation logs go through on_evaluate; the end-of-training summary is not a metric
        now = time.perf_counter()
        elapsed = max(now - self._last_log_time - self._excluded_time, 1e-9)
        values = {
            "loss": float(logs["loss"]),
            "lr": float(logs.get("learning_rate", 0.0)),
            "epoch": float(logs.get("epoch", state.epoch or 0.0)),
            "tokens_per_s": (self._tokens_flushed - self._last_log_tokens) / elapsed,
            "samples_per_s": (self._samples_flushed - self._last_log_samples) / elapsed,
            "tokens_seen": float(self._tokens_flushed),
        }
        if "grad_norm" in logs and logs["grad_norm"] is not None:
            values["grad_norm"] = float(logs["grad_norm"])
        values.update(_preference_values(logs))
        values.update(
            self._flops_metrics(
                values["tokens_per_s"], self._tokens_flushed - self._last_log_tokens, self._samples_flushed - self._last_log_samples
            )
        )
        values.update(memory_metrics(self.device))
        self._last_log_time, self._excluded_time = now, 0.0
        self._last_log_tokens, self._last_log_samples = self._tokens_flushed, self._samples_flushed
        self.latest.update(values)
        self.sink.metrics(state.global_step, values)
        self._apply_findings(state.global_step, values, control)
        return control

    def _gpu_peak(self) -> float | None:
        """This GPU's dense peak FLOP/s for the run's compute dtype; None off CUDA or for a GPU not in the table."""
        if self.device is None or self.device.type != "cuda":
            return None
        import torch

        try:
            name = torch.cuda.get_device_name(self.device)  # the same name NVML reports
        except Exception:  # torch cannot describe the device: no MFU rather than a failed run
            return None
        tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"
        return peak_flops(name, compute_dtype(self.run_info.get("precision") or "fp32", tf32_matmul=tf32))

    def _flops_metrics(self, tokens_per_s: float, tokens: int, samples: int) -> dict[str, float]:
        """Achieved model TFLOP/s per GPU (`tflops`) and MFU (`mfu`, a fraction) for one logging interval.

        Only on CUDA (a CPU has no peak in the table, and its figure would mean little). The attention
        term uses the interval's mean sample length (tokens per sample), the context a token attends within.
        """
        if self.device is None or self.device.type != "cuda" or self._model_config is None or not samples:
            return {}
        per_token = flops_per_token(
            self._model_config,
            trainable_params=int(self.run_info.get("trainable_params") or 0),
            total_params=int(self.run_info.get("total_params") or 0),
            seq_len=round(tokens / samples),
        )
        values = {"tflops": tokens_per_s * per_token / 1e12}
        if self._peak is not None:  # a GPU missing from engine.flops' table gets TFLOP/s without MFU
            values["mfu"] = mfu(tokens_per_s, per_token, self._peak)
        return values

    def _note_eval(self, eval_loss: float) -> bool:
        """Track the best eval loss; True when this one is a new best."""
        if math.isfinite(eval_loss) and (self.best_eval is None or eval_loss < self.best_eval - _EVAL_NOISE):
            self.best_eval = eval_loss
            self.evals_without_improvement = 0
            return True
        self.evals_without_improvement += 1
        return False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics or "eval_loss" not in metrics or not state.is_world_process_zero:
            return
        eval_loss = float(metrics["eval_loss"])
        self._excluded_time += float(metrics.get("eval_runtime", 0.0))
        values = {"eval_loss": eval_loss, "eval_ppl": math.exp(eval_loss) if eval_loss < 700 else math.inf}
        values.update(_preference_values(metrics, prefix="eval_"))
        self.latest.update(values)
        self.eval_at_step[state.global_step] = eval_loss
        self.sink.metrics(state.global_step, values)
        training = self.preset.training
        if self._note_eval(eval_loss) and (training.keep_best or training.load_best_at_end):
            # The best weights must be on disk to be kept or loaded at the end.
            control.should_save = True
        patience = training.early_stopping_patience
        if patience and self.evals_without_improvement >= patience:
            self.sink.event(
                "info",
                f"early stopping: eval loss has not improved on {self.best_eval:.4f} for {patience} evaluation(s)",
                state.global_step,
            )
            self._stop(control, "early_stop", save=False)
        self._apply_findings(state.global_step, values, control)
        return control

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        step = state.global_step
        path = self.artifacts.checkpoint_dir(step)
        eval_loss = self.eval_at_step.get(step)
        self._checkpoint_eval[step] = eval_loss
        metrics = {k: self.latest[k] for k in ("loss", "grad_norm", "lr", "epoch", "tokens_seen") if k in self.latest}
        if eval_loss is not None:
            metrics.update(eval_loss=eval_loss, eval_ppl=math.exp(eval_loss) if eval_loss < 700 else math.inf)
        self.sink.checkpoint(step, str(path), metrics)
        self._prune()
        self._check_disk_space(step, path)

    def _check_disk_space(self, step: int, checkpoint: Path) -> None:
        """The doctor's warning while a few more checkpoints still fit (the trainer stops when one does not)."""
        try:
            space = disk_space(self.artifacts.checkpoints_dir)
        except OSError:  # a filesystem that cannot say: nothing to warn about
            return
        for finding in self.doctor.observe_disk(step, space, folder_bytes(checkpoint)):
            self.sink.finding(finding.to_dict())

    # ------------------------------------------------------------------ keep policy

    def best_checkpoint(self) -> tuple[int, float] | None:
        """(step, eval_loss) of the checkpoint on disk with the lowest eval loss at its own step."""
        on_disk = self.artifacts.checkpoints()
        scored = [(loss, step) for step, loss in self._checkpoint_eval.items() if loss is not None and step in on_disk and math.isfinite(loss)]
        if not scored:
            return None
        loss, step = min(scored)
        return step, loss

    def _prune(self) -> None:
        """Keep the last keep_last checkpoints, the best by eval loss, and those the user marked keep."""
        training = self.preset.training
        if training.keep_last is None:
            return
        on_disk = self.artifacts.checkpoints()
        keep = set(sorted(on_disk)[-training.keep_last:])
        best = self.best_checkpoint()
        if (training.keep_best or training.load_best_at_end) and best is not None:
            keep.add(best[0])
        for step, path in on_disk.items():
            if step not in keep and not self.artifacts.is_kept(step):  # the user's keep mark wins
                remove_checkpoint(path)
                self._checkpoint_eval.pop(step, None)
                self.sink.checkpoint_removed(step, str(path))
