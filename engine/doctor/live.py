"""The doctor during training: the metric rules run on the series so far, at every report.

The training callback calls `LiveDoctor(preset).observe(step, values)` at each logging and
evaluation step and hands every returned finding to the sink. A finding is returned when it first
appears, at once again when it materially changes (it gets worse, or a new episode starts: a new
turn of the loss, a new best eval step, more spikes), and, while its condition lasts, again with
its new figures at most every UPDATE_EVERY reports, so the stored finding does not go stale. The
sink keeps one finding per rule and key (engine.doctor.finding_key): a re-sent one replaces it.
`Finding.stop` is set when the preset asks to stop on it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from engine.doctor import Finding, finding_key
from engine.doctor.rules import SEVERITY_RANK, analyse
from presets.stages import PREFERENCE_METRICS

TRACKED = ("loss", "eval_loss", "grad_norm", "lr", "epoch", *PREFERENCE_METRICS)
# After a save, fewer than this many checkpoints' worth of free space is worth a warning: the run
# stops (interrupted) when the next one would not fit.
DISK_LOW_CHECKPOINTS = 2
# Re-running every rule on a long run at every report would cost O(n²); past this many logged
# points the rules run every few reports (a NaN or an evaluation always triggers a run).
FULL_EVERY_POINTS = 400
# A lasting finding whose headline figures changed is re-sent at most this often (in reports), so
# the stored one stays current without a write at every logging step.
UPDATE_EVERY = 10


def _resolved_precision(precision: str) -> str:
    """Resolve "auto" as the engine does, when torch is loaded already (in the engine); else keep it."""
    if precision != "auto" or "torch" not in sys.modules:
        return precision
    try:
        from engine.models import resolve_precision

        return resolve_precision(precision)
    except Exception:  # the advice then covers both fp16 and the rest
        return precision


def _bucket(count: int) -> int:
    """1, 2-3, 4-7, 8-15 …: a spike count that doubles is news, one more spike is not."""
    return max(0, int(count)).bit_length()


def _figures(finding: Finding) -> tuple:
    """What a reader sees change: a re-sent finding that differs in none of these is not worth it."""
    return finding.severity, finding.title, finding.advice


def _episode(finding: Finding) -> tuple:
    """What makes a finding news again, beyond a higher severity."""
    evidence = finding.evidence
    kind = evidence.get("kind")
    if finding.rule == "spikes":
        return (_bucket(evidence.get("count", 1)),)
    if finding.rule == "overfitting":
        return (kind, evidence.get("best_step"))
    if finding.rule == "divergence":
        return (finding.step_start,)
    return (kind,)


@dataclass
class _Reported:
    rank: int  # the highest severity sent: only a higher one is news
    episode: tuple
    figures: tuple  # as last sent
    sent_at: int  # the report (observe call) it was last sent at


class LiveDoctor:
    """Incremental findings for one run; one instance per run."""

    def __init__(self, preset: Any, *, precision: str | None = None, total_steps: int | None = None):
        self.preset = preset
        training = getattr(preset, "training", None)
        doctor = getattr(preset, "doctor", None)
        self.precision = precision or _resolved_precision(getattr(training, "precision", None) or "auto")
        self.max_grad_norm = getattr(training, "max_grad_norm", None)
        self.lr_schedule = getattr(training, "scheduler", None)
        self.preset_lr = getattr(training, "lr", None)  # what the advice quotes, not the warmup's logged rates
        self.stage = getattr(preset, "stage", None)  # a preference stage has its own rules
        self.total_steps = total_steps or getattr(training, "max_steps", None)
        self.stop_on_nan = bool(getattr(doctor, "stop_on_nan", True))
        self.stop_on_divergence = bool(getattr(doctor, "stop_on_divergence", False))
        self.series: dict[str, list[tuple[int, float]]] = {name: [] for name in TRACKED}
        self._reported: dict[tuple, _Reported] = {}  # by finding_key
        self._calls = 0
        self._peak_watch = None  # made at the first CUDA memory report
        self._disk_low = False  # the disk_space warning was given and space has not recovered since
        self.findings: list[Finding] = []  # every finding reported so far, in order

    def set_total_steps(self, total_steps: int | None) -> None:
        """The engine knows the step count only once the trainer is built."""
        if total_steps:
            self.total_steps = int(total_steps)

    def observe(self, step: int, values: dict[str, Any]) -> list[Finding]:
        """Record one report's metrics; return the findings that are new or changed."""
        self._calls += 1
        memory = self._memory_finding(step, values)
        urgent = False
        touched = False
        for name in TRACKED:
            if name not in values or values[name] is None:
                continue
            try:
                value = float(values[name])
            except (TypeError, ValueError):
                continue
            self.series[name].append((int(step), value))
            touched = True
            if name == "eval_loss" or not math.isfinite(value):
                urgent = True
        if not touched:
            return memory
        points = len(self.series["loss"])
        if not urgent and points > FULL_EVERY_POINTS and self._calls % max(1, points // FULL_EVERY_POINTS):
            return memory
        findings = analyse(
            self.series, precision=self.precision, lr_schedule=self.lr_schedule,
            max_grad_norm=self.max_grad_norm, total_steps=self.total_steps, preset_lr=self.preset_lr,
            stage=self.stage,
        )
        fresh = []
        for finding in findings:
            key = finding_key(finding)
            rank = SEVERITY_RANK[finding.severity]
            episode = _episode(finding)
            previous = self._reported.get(key)
            if previous is not None:
                news = rank > previous.rank or (rank == previous.rank and episode != previous.episode)
                # Otherwise the same condition, still there: re-send its figures now and then.
                due = self._calls - previous.sent_at >= UPDATE_EVERY and _figures(finding) != previous.figures
                if not news and not due:
                    continue
            self._reported[key] = _Reported(
                rank=max(rank, previous.rank) if previous else rank,
                episode=episode if previous is None or rank >= previous.rank else previous.episode,
                figures=_figures(finding), sent_at=self._calls,
            )
            finding.stop = self._should_stop(finding)
            fresh.append(finding)
        fresh += memory
        self.findings += fresh
        return fresh

    def observe_disk(self, step: int, space: Any, checkpoint_bytes: int) -> list[Finding]:
        """After a save: a warning once free space (an engine.artifacts.DiskSpace) drops under two
        checkpoints of `checkpoint_bytes`, and again only after it has recovered in between."""
        if checkpoint_bytes <= 0 or space.free >= DISK_LOW_CHECKPOINTS * checkpoint_bytes:
            self._disk_low = False
            return []
        if self._disk_low:
            return []
        self._disk_low = True
        from engine.artifacts import human_bytes

        finding = Finding(
            rule="disk_space", severity="warning",
            title=(f"disk almost full: {human_bytes(space.free)} free on {space.mount}, "
                   f"less than two checkpoints of {human_bytes(checkpoint_bytes)}"),
            advice=(f"Free space on {space.mount}, keep fewer checkpoints (lower training.keep_last) or save less often "
                    "(raise training.save_steps). When a checkpoint no longer fits, the run stops interrupted and "
                    "resumes from its last whole checkpoint."),
            step_start=step, step_end=step,
            evidence={"kind": "low", "free": space.free, "total": space.total, "mount": str(space.mount),
                      "path": str(space.path), "checkpoint_bytes": checkpoint_bytes},
        )
        self.findings.append(finding)
        return [finding]

    def _memory_finding(self, step: int, values: dict[str, Any]) -> list[Finding]:
        """After a few CUDA reports: the measured peak beside the preflight estimate (stored as a finding)."""
        if values.get("mem_peak_reserved") is None or self.preset is None or not hasattr(self.preset, "model"):
            return []
        if self._peak_watch is None:
            from engine.doctor.memory import PeakWatch

            precision = self.precision if self.precision in ("bf16", "fp16", "fp32") else None
            self._peak_watch = PeakWatch(self.preset, precision=precision)
        record = self._peak_watch.observe(step, values)
        if record is None:
            return []
        from engine.doctor.memory import format_bytes

        total = record.get("gpu_total")
        near_limit = bool(total) and record["measured_peak_reserved"] >= 0.95 * total
        ratio = record.get("ratio")
        return [Finding(
            rule="memory", severity="warning" if near_limit else "info",
            title=(
                f"GPU memory: peak {format_bytes(record['measured_peak_reserved'])} reserved by torch, "
                f"estimated {format_bytes(record['estimate_torch_bytes'])}" + (f" (measured/estimated {ratio:.2f})" if ratio else "")
            ),
            advice=(
                "The run is within 5 % of the GPU's memory: a longer batch may run out; lower training.batch_size or "
                "data.max_length, or turn on training.gradient_checkpointing."
                if near_limit else "For the record: `tunebench doctor PRESET` estimates before a run is queued."
            ),
            step_start=step, step_end=step, evidence={"kind": "peak", **record},
        )]

    def _should_stop(self, finding: Finding) -> bool:
        if finding.rule == "nan" and finding.severity == "error":
            return self.stop_on_nan
        if finding.rule == "divergence" and finding.severity != "info":
            return self.stop_on_divergence
        if finding.rule == "pref_margins" and finding.evidence.get("kind") == "shrinking":
            return self.stop_on_divergence  # a preference run's divergence: the learnt preference undone
        return False
