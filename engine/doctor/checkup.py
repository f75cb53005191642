"""The doctor on demand (`tunebench doctor`): a run's whole metric history after the fact, and a
train preset before it trains (its data, and its peak GPU memory against the free memory).

The caller hands a stored run over as plain data (metric rows, the frozen preset's YAML, the run's
info and its stored findings): the engine knows nothing of the run store. The rules themselves
are those of the live doctor (rules.py, data_rules.py, memory.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from engine.doctor import Finding

Series = dict[str, list[tuple[int, float]]]


@dataclass
class RunCheckup:
    series: Series  # metric name → (step, value) points
    findings: list[Finding]
    memory: dict | None = None  # the memory finding's evidence: the estimate against the measured peak

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


def check_run(metric_rows: Iterable, preset_yaml: str | None, *, info: dict | None = None,
              total_steps: int | None = None, stored_findings: Iterable[dict] = ()) -> RunCheckup:
    """The metric rules on a stored run's whole history.

    `metric_rows`: (step, name, value) rows or objects with those fields; `preset_yaml`: the frozen
    preset (its precision, scheduler and clipping tune the rules); `stored_findings`: the findings
    recorded while it trained, as dicts (the memory finding among them is reported as it was).
    """
    from engine.doctor.rules import series_from_rows

    series = series_from_rows(metric_rows)
    preset = _preset_from_yaml(preset_yaml, "the run's frozen preset") if preset_yaml else None
    info = info or {}
    findings = _analyse(series, preset, info, total_steps, preset_lr=_raw_preset_lr(preset_yaml) if preset is None else None)
    memory = info.get("memory") or _memory_evidence(stored_findings)
    return RunCheckup(series, findings, memory)


def check_run_folder(folder: Path) -> RunCheckup:
    """The metric rules on a run folder's metrics.jsonl (and its preset.yaml, when there is one)."""
    from engine.artifacts import RunArtifacts
    from engine.doctor.rules import series_from_jsonl

    artifacts = RunArtifacts(folder)
    with artifacts.metrics_file.open(encoding="utf-8", errors="replace") as handle:
        lines = handle.readlines()
    series = series_from_jsonl(lines)
    info: dict = {}
    memory = None
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "run_started":
            info.update(record)
        elif record.get("type") == "finding" and record.get("rule") == "memory":
            memory = record.get("evidence")
    preset, preset_lr = None, None
    if artifacts.preset_file.is_file():
        text = artifacts.preset_file.read_text(encoding="utf-8")
        preset = _preset_from_yaml(text, str(artifacts.preset_file))
        preset_lr = _raw_preset_lr(text) if preset is None else None
    return RunCheckup(series, _analyse(series, preset, info, info.get("total_steps"), preset_lr=preset_lr), memory)


def run_folder(path: str | Path) -> Path | None:
    """The run folder `path` names (the folder, or its metrics.jsonl); None when it names none."""
    path = Path(path).expanduser()
    if path.is_file() and path.name.endswith(".jsonl"):
        return path.parent
    if path.is_dir() and (path / "metrics.jsonl").is_file():
        return path
    return None


def _analyse(series: Series, preset, info: dict, total_steps: int | None, *, preset_lr: float | None = None) -> list[Finding]:
    """`preset_lr`: training.lr read from a preset that no longer validates (the preset's own wins)."""
    from engine.doctor.rules import analyse

    training = getattr(preset, "training", None)
    precision = info.get("precision") or getattr(training, "precision", None) or "auto"
    return analyse(
        series, precision=precision, lr_schedule=getattr(training, "scheduler", None),
        max_grad_norm=getattr(training, "max_grad_norm", None), total_steps=total_steps or info.get("total_steps"),
        preset_lr=getattr(training, "lr", None) or preset_lr, stage=getattr(preset, "stage", None),
    )


def _raw_preset_lr(text: str | None) -> float | None:
    """training.lr of a preset's YAML without validating the rest: an old frozen preset still names it."""
    if not text:
        return None
    import yaml

    try:
        data = yaml.safe_load(text)
        return float(data["training"]["lr"])
    except Exception:  # not YAML, no training.lr, not a number: the advice falls back to the logged rates
        return None


def _preset_from_yaml(text: str, source: str):
    from presets import PresetError, load_preset_text

    try:
        return load_preset_text(text, source)
    except PresetError:
        return None  # an old frozen preset: the rules still run, with default thresholds


def _memory_evidence(findings: Iterable[dict]) -> dict | None:
    for finding in reversed(list(findings)):
        if finding.get("rule") == "memory":
            return finding.get("evidence")
    return None


# --------------------------------------------------------------------------- presets


@dataclass
class PresetCheckup:
    findings: list[Finding] = field(default_factory=list)
    data_report: Any = None  # engine.data.DataReport; None when the data was not (or could not be) read
    estimate: Any = None  # engine.doctor.memory.MemoryEstimate; None with memory_note saying why
    memory_note: str | None = None

    @property
    def has_errors(self) -> bool:
        return any(f.severity == "error" for f in self.findings)


def check_preset(preset, *, load_data: bool = True, gpu_free_bytes: int | None = None) -> PresetCheckup:
    """Data findings and the peak GPU memory estimate of a train preset (paths already resolved).

    `gpu_free_bytes`: compare with this much free GPU memory instead of asking NVML; `load_data`
    False skips the data (the memory estimate then assumes max_length).
    """
    from engine.doctor.memory import estimate_memory, load_model_config
    from engine.hardware import gpu_memory

    data_findings, report = _data_findings(preset) if load_data else ([], None)
    seq_len = None
    if report is not None and report.length.max:
        # Batches are padded to their longest sample: the longest sample bounds the length, not max_length.
        seq_len = preset.data.max_length if preset.data.packing else min(preset.data.max_length, report.length.max)

    estimate, memory_note = None, None
    try:
        config = load_model_config(preset.model.path, revision=preset.model.revision)
    except (FileNotFoundError, ValueError, OSError) as exc:
        memory_note = f"no memory estimate: {exc}"
    else:
        if gpu_free_bytes is not None:
            free, total = gpu_free_bytes, None
        else:
            free, total = gpu_memory() or (None, None)
        try:
            estimate = estimate_memory(preset, config, gpu_free_bytes=free, gpu_total_bytes=total, seq_len=seq_len)
        except ValueError as exc:
            memory_note = f"no memory estimate: {exc}"
    findings = data_findings + (_memory_findings(estimate) if estimate else [])
    return PresetCheckup(findings, report, estimate, memory_note)


def _data_findings(preset) -> tuple[list[Finding], Any]:
    """(findings, the DataReport or None when the pipeline refused the data)."""
    from engine.data import build_datasets
    from engine.doctor.data_rules import data_findings
    from engine.errors import EngineError
    from engine.models import load_tokenizer

    try:
        tokenizer = load_tokenizer(preset.model)
        bundle = build_datasets(preset.data, tokenizer, seed=preset.data.shuffle_seed)
    except EngineError as exc:
        # The pipeline refuses data that cannot train at all (DataError): that is the first finding.
        finding = Finding(rule="data", severity="error", title=exc.message, advice=exc.advice or "fix the data section of the preset")
        return [finding], None
    return data_findings(bundle.report), bundle.report


def _memory_findings(estimate) -> list[Finding]:
    from engine.doctor.memory import format_bytes

    if estimate.fits is None or estimate.fits:
        return []
    fitting = [s for s in estimate.suggestions if s.fits]
    advice = (
        "Try " + "; or ".join(f"{s.knob} ({' '.join('--set ' + o for o in s.overrides)}: {format_bytes(s.total_bytes)})" for s in fitting[:3])
        if fitting else "Nothing single fits: combine the knobs in the table, or use a GPU with more memory."
    )
    return [Finding(
        rule="memory", severity="warning",
        title=f"estimated peak {format_bytes(estimate.total_bytes)} exceeds the {format_bytes(estimate.gpu_free_bytes)} free on the GPU",
        advice=advice, evidence={"estimate_bytes": estimate.total_bytes, "gpu_free_bytes": estimate.gpu_free_bytes},
    )]
