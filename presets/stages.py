"""The training stages: one row each, read by the schema, the data layer, the engine, the doctor and the TUI.

A stage says what a run optimises: `sft` the next-token loss on supervised tokens (continued
pre-training is sft on a text dataset), the preference stages a loss over pairs (or, for KTO,
unpaired judged answers). The engine's trainers are a second table keyed by the same names
(engine/stages.py; a test checks the keys match), because building them needs TRL and torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DataShape = Literal["sft", "pairs", "unpaired"]


@dataclass(frozen=True)
class Stage:
    name: str
    label: str  # how people write it
    summary: str
    data: DataShape  # sft rows, prompt/chosen/rejected pairs, or KTO's prompt/completion/label
    reference: Literal["none", "needed", "never"]  # whether the loss compares with a frozen reference model
    default_beta: float | None = None  # preference.beta when the preset leaves it unset
    loss_types: tuple[str, ...] = ()  # preference.loss_type values; the first is the default
    params: tuple[str, ...] = ()  # the preference.* settings this stage reads (beyond beta / loss_type)

    @property
    def is_preference(self) -> bool:
        return self.data != "sft"


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("sft", "SFT", "supervised fine-tuning (or continued pre-training on a text dataset)", "sft", "none"),
        Stage(
            "dpo", "DPO", "direct preference optimisation against a frozen reference", "pairs", "needed",
            default_beta=0.1, loss_types=("sigmoid", "ipo", "hinge", "robust"), params=("label_smoothing",),
        ),
        Stage(
            "orpo", "ORPO", "odds-ratio preference optimisation: SFT loss plus a preference term, no reference",
            "pairs", "never", default_beta=0.1,
        ),
        Stage(
            "kto", "KTO", "Kahneman-Tversky optimisation on unpaired answers judged good or bad", "unpaired", "needed",
            default_beta=0.1, params=("desirable_weight", "undesirable_weight"),
        ),
        Stage(
            "simpo", "SimPO", "simple preference optimisation: length-normalised reward with a target margin, no reference",
            "pairs", "never", default_beta=2.0, params=("simpo_gamma", "label_smoothing"),
        ),
    )
}

# The metrics TRL logs for preference runs (train; evaluation adds the eval_ prefix): the dashboard's
# preference panels and the doctor's preference rules read them by these names.
PREFERENCE_METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "kl",
)


def stage_names() -> tuple[str, ...]:
    return tuple(STAGES)


def preference_stage_names() -> tuple[str, ...]:
    return tuple(name for name, stage in STAGES.items() if stage.is_preference)
