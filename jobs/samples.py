"""A run's per-sample losses, read for `tunebench samples` and the Samples screen.

The files are engine.sample_loss's (runs/<id>/samples/step-<N>.jsonl, pure JSON: reading them
loads no torch). Two lists answer the two questions:

    worst  the samples with the highest loss at a step: what the model finds hardest (label noise
           and mislabelled answers rise to the top)
    rose   the samples whose loss rose most from the base model (step 0) to that step: forgetting
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobs.store import Store
from jobs.workspace import Workspace
from presets.errors import TunebenchError

DEFAULT_COUNT = 10


class SamplesError(TunebenchError):
    """A run without per-sample losses, or a step it has none for."""


@dataclass(frozen=True)
class SampleRow:
    split: str  # "val" or "train"
    index: int
    loss: float  # at the chosen step
    tokens: int
    preview: str
    answer: str
    base_loss: float | None = None  # at step 0 (the base model), when measured

    @property
    def rise(self) -> float | None:
        return None if self.base_loss is None else self.loss - self.base_loss


@dataclass
class SamplesView:
    run_id: str
    steps: list[int]  # every step with losses on disk (0 = the base model)
    step: int  # the step shown
    samples: int = 0  # samples measured at that step
    mean_loss: float = 0.0
    worst: list[SampleRow] = field(default_factory=list)
    rose: list[SampleRow] = field(default_factory=list)  # loss above the base's; empty without step 0
    has_base: bool = False

    def to_dict(self) -> dict:
        def rows(items: list[SampleRow]) -> list[dict]:
            return [{"split": r.split, "index": r.index, "loss": r.loss, "base_loss": r.base_loss, "rise": r.rise,
                     "tokens": r.tokens, "preview": r.preview, "answer": r.answer} for r in items]

        return {"run_id": self.run_id, "steps": self.steps, "step": self.step, "samples": self.samples,
                "mean_loss": self.mean_loss, "has_base": self.has_base, "worst": rows(self.worst), "rose": rows(self.rose)}


def sample_steps(run_dir: Path) -> list[int]:
    from engine.sample_loss import saved_steps  # pure Python: the file layout

    return saved_steps(run_dir)


def samples_view(run_dir: Path, run_id: str, *, step: int | None = None, worst: int = DEFAULT_COUNT,
                 rose: int = DEFAULT_COUNT) -> SamplesView:
    """The `worst` hardest samples at `step` (default: the last one measured) and the `rose` whose
    loss rose most since step 0. SamplesError says what to do when there is nothing to show."""
    from engine.sample_loss import BASE_STEP, read_losses, saved_steps

    steps = saved_steps(run_dir)
    trained = [s for s in steps if s != BASE_STEP]
    if not trained and step is None:
        raise SamplesError(
            f"run {run_id} has no per-sample losses yet" + (" (only the base model's, step 0)" if steps else ""),
            "they are written at each evaluation and at the end of an SFT run that has a validation split "
            "(data.val_ratio or data.val_files) or training.sample_losses_train; wait for the first evaluation",
        )
    chosen = trained[-1] if step is None else step
    if chosen not in steps:
        raise SamplesError(f"run {run_id} has no per-sample losses at step {chosen}",
                           f"pick one of the steps measured: {', '.join(map(str, steps))}")
    losses = read_losses(run_dir, chosen)  # a damaged file: EngineError naming its line
    base = {s.key: s.loss for s in read_losses(run_dir, BASE_STEP)} if BASE_STEP in steps and chosen != BASE_STEP else {}
    rows = [SampleRow(s.split, s.index, s.loss, s.tokens, s.preview, s.answer, base.get(s.key)) for s in losses]
    view = SamplesView(run_id, steps, chosen, samples=len(rows), has_base=bool(base),
                       mean_loss=sum(r.loss for r in rows) / len(rows) if rows else 0.0)
    view.worst = sorted(rows, key=lambda r: (-r.loss, r.split, r.index))[:worst]
    compared = [r for r in rows if r.rise is not None and r.rise > 0]  # only those that did rise
    view.rose = sorted(compared, key=lambda r: (-r.rise, r.split, r.index))[:rose]
    return view


def run_samples(store: Store, workspace: Workspace, ref: str, **options) -> SamplesView:
    """samples_view of a run named by id, id prefix or name."""
    run = store.resolve_run(ref)
    return samples_view(workspace.run_dir(run.id), run.id, **options)
