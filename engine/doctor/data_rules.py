"""Findings on the training data, before a step is trained: from the data pipeline's DataReport.

`data_findings(report)` reads only the report's fields (engine/data/report.py), so it imports no
torch and can run in the TUI on a stored report. A finding with severity "error" refuses the run
(engine.train raises DataError with its title and advice).
"""

from __future__ import annotations

from typing import Any

from engine.doctor import Finding

DROPPED_WARN_SHARE = 0.1
SUPERVISED_LOW_SHARE = 0.05  # under 5 % of the tokens carry a label
SUPERVISED_PER_SAMPLE_MIN = 2.0  # an end-of-turn token and next to nothing else
TRUNCATION_INFO_SHARE = 0.01
TRUNCATION_WARN_SHARE = 0.1
OUTLIER_RATIO = 8.0  # the longest sample this many times the median …
OUTLIER_OVER_P95 = 3.0  # … and this many times the 95th percentile
DUPLICATE_INFO_SHARE = 0.01
DUPLICATE_WARN_SHARE = 0.1
PADDING_WARN_EFFICIENCY = 0.5  # half the slots of a padded batch are padding
PADDING_INFO_EFFICIENCY = 0.7


def _get(report: Any, name: str, default=None):
    if isinstance(report, dict):
        return report.get(name, default)
    return getattr(report, name, default)


def _length(report: Any, name: str) -> float:
    length = _get(report, "length")
    value = length.get(name) if isinstance(length, dict) else getattr(length, name, None)
    return float(value or 0)


def data_findings(report: Any) -> list[Finding]:
    """Findings on a DataReport (the dataclass or its to_dict())."""
    findings: list[Finding] = []
    train = int(_get(report, "train_samples", 0) or 0)
    rows = int(_get(report, "rows_read", 0) or 0)
    dropped: dict[str, int] = dict(_get(report, "dropped", {}) or {})
    supervised = int(_get(report, "supervised_tokens", 0) or 0)
    total_tokens = int(_get(report, "total_tokens", 0) or 0)
    files = ", ".join(_get(report, "files", []) or []) or "the training data"

    # --- samples with nothing to learn from (three findings of one rule: each has its own evidence
    # kind, as the store keeps one finding per rule and kind)
    unsupervised = sum(n for reason, n in dropped.items() if "supervised" in reason)
    if train == 0 or supervised == 0:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in dropped.items()) or "none left"
        findings.append(Finding(
            rule="data_unsupervised", severity="error",
            title=f"no training sample has a supervised token ({files}; {reasons})",
            advice=(
                "Every answer is masked or empty: check data.format and the role tags (data.tags.assistant), "
                "that the chat template renders the assistant turns, and data.max_length (answers cut off)."
            ),
            evidence={"kind": "none", "train_samples": train, "supervised_tokens": supervised, "dropped": dropped},
        ))
        return findings
    if unsupervised:
        share = unsupervised / max(1, unsupervised + train)
        findings.append(Finding(
            rule="data_unsupervised", severity="warning" if share >= DROPPED_WARN_SHARE else "info",
            title=f"{unsupervised} sample(s) have no supervised token and were left out ({share:.0%})",
            advice="Their answers are masked, empty or cut off by data.max_length; see `tunebench data PRESET` for which.",
            evidence={"kind": "left_out", "samples": unsupervised, "share": round(share, 4)},
        ))
    per_sample = supervised / max(1, train)
    share = float(_get(report, "supervised_share", 0.0) or (supervised / total_tokens if total_tokens else 0.0))
    if per_sample < SUPERVISED_PER_SAMPLE_MIN:
        findings.append(Finding(
            rule="data_unsupervised", severity="warning",
            title=f"almost nothing is supervised: {per_sample:.1f} labelled token(s) per sample",
            advice=(
                "Only the end-of-turn token seems to carry a label: the answers are empty or masked. Check the answer "
                "column (data.columns.output) or role tags; a loss near 0 at once would be the symptom."
            ),
            evidence={"kind": "scarce", "supervised_per_sample": round(per_sample, 3), "supervised_share": round(share, 4)},
        ))
    elif share < SUPERVISED_LOW_SHARE and _get(report, "assistant_only_loss", True):
        findings.append(Finding(
            rule="data_supervised_share", severity="info",
            title=f"only {share:.1%} of the tokens carry a label (long prompts, short answers)",
            advice="Fine for short answers; each step then learns from few tokens: a larger batch or more epochs may help.",
            evidence={"supervised_share": round(share, 4), "supervised_per_sample": round(per_sample, 1)},
        ))

    # --- rows the pipeline could not use
    other_dropped = {reason: n for reason, n in dropped.items() if "supervised" not in reason}
    dropped_total = sum(other_dropped.values())
    if rows and dropped_total:
        share = dropped_total / rows
        listed = ", ".join(f"{reason}: {n}" for reason, n in sorted(other_dropped.items(), key=lambda kv: -kv[1]))
        findings.append(Finding(
            rule="data_dropped", severity="warning" if share >= DROPPED_WARN_SHARE else "info",
            title=f"{dropped_total} of {rows} rows were left out ({share:.0%}): {listed}",
            advice="Fix those rows or the column/role mapping (data.columns.*, data.tags.*); `tunebench data PRESET` shows them.",
            evidence={"dropped": other_dropped, "rows_read": rows, "share": round(share, 4)},
        ))

    # --- truncation and length outliers
    truncated_share = float(_get(report, "truncated_share", 0.0) or 0.0)
    truncated = int(_get(report, "truncated", 0) or 0)
    max_length = int(_get(report, "max_length", 0) or 0)
    p95, median, longest = _length(report, "p95"), _length(report, "median"), _length(report, "max")
    if truncated and truncated_share >= TRUNCATION_INFO_SHARE:
        findings.append(Finding(
            rule="data_truncation", severity="warning" if truncated_share >= TRUNCATION_WARN_SHARE else "info",
            title=f"{truncated_share:.0%} of the samples are longer than max_length {max_length} and get cut",
            advice=(
                f"Cut answers teach the model to stop mid-sentence (and lose their end-of-turn token): raise data.max_length "
                f"(the 95th percentile is {int(p95)} tokens, the longest {int(longest)}) if memory allows, or shorten the data."
            ),
            evidence={"truncated": truncated, "share": round(truncated_share, 4), "max_length": max_length,
                      "p95": int(p95), "longest": int(longest)},
        ))
    if median and longest >= OUTLIER_RATIO * median and longest >= OUTLIER_OVER_P95 * max(p95, 1):
        findings.append(Finding(
            rule="data_length_outliers", severity="info",
            title=f"length outliers: the longest sample has {int(longest)} tokens, the median {int(median)}",
            advice=(
                "A few very long samples set the padded length of their batches (memory spikes, padding waste) and are "
                "truncated at max_length; drop them or check that they are not concatenated rows."
            ),
            evidence={"longest": int(longest), "median": int(median), "p95": int(p95)},
        ))

    # --- duplicates and train/validation overlap
    duplicates = int(_get(report, "duplicates", 0) or 0)
    if duplicates:
        share = duplicates / max(1, train)
        if share >= DUPLICATE_INFO_SHARE:
            findings.append(Finding(
                rule="data_duplicates", severity="warning" if share >= DUPLICATE_WARN_SHARE else "info",
                title=f"{duplicates} training samples ({share:.0%}) are exact duplicates of others",
                advice="Duplicates are learnt more strongly than the rest and make overfitting come sooner; deduplicate the data.",
                evidence={"duplicates": duplicates, "share": round(share, 4)},
            ))
    overlap = int(_get(report, "train_val_overlap", 0) or 0)
    eval_samples = int(_get(report, "eval_samples", 0) or 0)
    if overlap and eval_samples:
        share = overlap / eval_samples
        findings.append(Finding(
            rule="data_overlap", severity="warning",
            title=f"{overlap} of {eval_samples} validation samples ({share:.0%}) also appear in the training data",
            advice="The eval loss is optimistic and hides overfitting: remove them from the validation set (or deduplicate before data.val_ratio).",
            evidence={"overlap": overlap, "eval_samples": eval_samples, "share": round(share, 4)},
        ))

    # --- padding waste
    packing = bool(_get(report, "packing", False))
    padding = float(_get(report, "padding_efficiency", 0.0) or 0.0)
    packed = float(_get(report, "packing_efficiency", 0.0) or 0.0)
    batch = int(_get(report, "efficiency_batch_size", 8) or 8)
    if not packing and padding and padding < PADDING_INFO_EFFICIENCY:
        gain = f"; packing would fill {packed:.0%}" if packed else ""
        findings.append(Finding(
            rule="data_padding", severity="warning" if padding < PADDING_WARN_EFFICIENCY else "info",
            title=f"{1 - padding:.0%} of the token slots in a batch of {batch} are padding",
            advice=f"Compute and memory go to padding: set data.packing: true{gain}, or lower data.max_length.",
            evidence={"padding_efficiency": round(padding, 4), "packing_efficiency": round(packed, 4), "batch_size": batch},
            change={"data.packing": True},
        ))

    # --- the model must learn to stop
    closes = _get(report, "template_has_eos_after_assistant", None)
    if closes is False:
        findings.append(Finding(
            rule="data_no_eos", severity="warning",
            title="the chat template puts no end-of-turn token after the assistant's answers",
            advice=(
                "The model will never learn to stop and will ramble until max_new_tokens: use a template that closes "
                "answers with the eos token (data.chat_template: chatml, llama3, qwen2 …) or add the eos token to the answers."
            ),
            evidence={"end_of_turn_token": _get(report, "end_of_turn_token"), "chat_template": _get(report, "chat_template")},
        ))
    inexact = int(_get(report, "inexact_masks", 0) or 0)
    if inexact:
        findings.append(Finding(
            rule="data_masks", severity="info",
            title=f"{inexact} samples: the chat template renders prefixes differently, the answer span is approximated",
            advice="Check one such sample in `tunebench data PRESET`; a template without per-turn rewriting avoids it.",
            evidence={"samples": inexact},
        ))
    return findings
