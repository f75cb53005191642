"""Per-sample losses written by a real training run (tiny model, CPU) equal a direct computation
with the same weights: the checkpoint of that step, and the base model for step 0."""

from __future__ import annotations

import pytest
import torch

from helpers.training import RecordingSink, tiny_preset

SETTINGS = [
    "data.val_ratio=0.25",
    "data.max_samples=12",
    "training.max_steps=4",
    "training.save_steps=2",
    "training.eval_steps=2",
    "training.keep_last=null",
    "training.lr=5e-3",
    "training.sample_losses_train=3",
]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, demo_data_file, tmp_path_factory):
    from engine.train import train

    sink = RecordingSink()
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, *SETTINGS)
    result = train(preset, tmp_path_factory.mktemp("samples") / "run", sink)
    assert result.status == "completed" and result.global_step == 4
    return preset, sink, result


def _direct_losses(model, dataset, count: int) -> list[float]:
    """Each row's mean token loss over its supervised tokens, one row at a time, no padding."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(count):
            ids = torch.tensor([dataset[i]["input_ids"]])
            labels = torch.tensor(dataset[i]["labels"])
            logits = model(input_ids=ids).logits[0, -ids.shape[1]:-1].float()  # prompt tuning's virtual tokens come first
            targets = labels[1:]
            mask = targets != -100
            out.append(torch.nn.functional.cross_entropy(logits[mask], targets[mask]).item())
    return out


def _bundle(preset, tiny_model_dir):
    from transformers import AutoTokenizer

    from engine.data import build_datasets

    return build_datasets(preset.data, AutoTokenizer.from_pretrained(tiny_model_dir), seed=preset.data.shuffle_seed)


def test_losses_at_each_evaluation_equal_a_direct_computation_with_the_checkpoint(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.sample_loss import read_losses, saved_steps

    preset, _, result = trained
    assert saved_steps(result.run_dir) == [0, 2, 4]
    bundle = _bundle(preset, tiny_model_dir)
    n_val = len(bundle.eval)
    assert n_val >= 3
    for step in (2, 4):
        saved = read_losses(result.run_dir, step)
        val = [s for s in saved if s.split == "val"]
        train = [s for s in saved if s.split == "train"]
        assert [s.index for s in val] == list(range(n_val)) and [s.index for s in train] == [0, 1, 2]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                          result.run_dir / "checkpoints" / f"checkpoint-{step}")
        assert [s.loss for s in val] == pytest.approx(_direct_losses(model, bundle.eval, n_val), abs=1e-4)
        assert [s.loss for s in train] == pytest.approx(_direct_losses(model, bundle.train, 3), abs=1e-4)
        assert all(s.tokens > 0 and s.preview for s in saved)


def test_step_zero_is_the_base_model(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from engine.sample_loss import read_losses

    preset, _, result = trained
    bundle = _bundle(preset, tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    val = [s for s in read_losses(result.run_dir, 0) if s.split == "val"]
    assert [s.loss for s in val] == pytest.approx(_direct_losses(base, bundle.eval, len(bundle.eval)), abs=1e-4)
    # Training moved them: the fine-tuned losses differ from the base's.
    tuned = [s for s in read_losses(result.run_dir, 4) if s.split == "val"]
    assert any(abs(a.loss - b.loss) > 1e-3 for a, b in zip(val, tuned))


def test_the_cost_is_in_the_run_events(trained):
    _, sink, _ = trained
    lines = [text for level, text, step in sink.of("event") if text.startswith("sample losses:")]
    assert len(lines) == 3 and all("samples in" in line for line in lines), lines


def test_samples_view_reads_the_run(trained):
    from jobs.samples import samples_view

    _, _, result = trained
    view = samples_view(result.run_dir, "r", worst=100, rose=100)
    assert view.step == 4 and view.steps == [0, 2, 4] and view.has_base
    losses = [row.loss for row in view.worst]
    assert losses == sorted(losses, reverse=True) and view.samples == len(losses)
    assert all(row.rise > 0 and row.base_loss is not None for row in view.rose)


def test_prompt_tuning_measures_the_samples_tokens_not_its_virtual_ones(tiny_model_dir, demo_data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.sample_loss import read_losses
    from engine.train import train

    preset = tiny_preset("prompt_tuning", tiny_model_dir, demo_data_file, "data.val_ratio=0.25", "data.max_samples=8",
                         "training.max_steps=2", "training.eval_steps=2", "training.save_steps=2")
    result = train(preset, tmp_path / "run", RecordingSink())
    bundle = _bundle(preset, tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                      result.run_dir / "checkpoints" / "checkpoint-2")
    saved = [s.loss for s in read_losses(result.run_dir, 2)]
    assert saved == pytest.approx(_direct_losses(model, bundle.eval, len(bundle.eval)), abs=1e-4)
