"""Preference stages through engine.train on the tiny model (CPU): the DPO wiring against TRL's own
DPOTrainer, cancel and resume of a DPO run, the other stages end to end, and start_from."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.training import RecordingSink

pytest.importorskip("trl")

WRONG = {"France": "Rome", "Japan": "Lima", "Italy": "Oslo", "Spain": "Cairo", "Kenya": "Berlin", "Peru": "Tokyo",
         "Chile": "Accra", "Cuba": "Paris", "Fiji": "Madrid", "Iran": "Dublin", "Iraq": "Suva", "Nepal": "Rabat"}


def pairs_file(path, *, unpaired: bool = False):
    from engine.demo_data import CAPITALS

    rows = []
    for country, wrong in WRONG.items():
        question = f"What is the capital of {country}?"
        right = f"The capital of {country} is {CAPITALS[country]}."
        bad = f"The capital of {country} is {wrong}."
        if unpaired:
            rows += [{"prompt": question, "completion": right, "label": True},
                     {"prompt": question, "completion": bad, "label": False}]
        else:
            rows.append({"prompt": question, "chosen": right, "rejected": bad})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


STEPS = [
    "data.val_ratio=0",
    "data.max_length=64",
    "training.max_steps=3",
    "training.batch_size=4",
    "training.grad_accum=1",
    "training.logging_steps=1",
    "training.save_steps=3",
    "training.eval_steps=null",
    "training.warmup_ratio=0",
    "training.lr=5e-3",
    "method.lora.r=8",
    "method.lora.alpha=16",
]


def preference_preset(stage: str, tiny_model_dir, data_file, *overrides: str):
    from presets import load_preset

    return load_preset(stage, None, [f"model.path={tiny_model_dir}", f"data.train_files={data_file}", *STEPS, *overrides])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return pairs_file(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


@pytest.fixture(scope="module")
def straight_dpo(tiny_model_dir, pairs, tmp_path_factory):
    from engine.train import train

    sink = RecordingSink()
    preset = preference_preset("dpo", tiny_model_dir, pairs, "training.max_steps=6", "training.save_steps=2", "training.keep_last=null")
    result = train(preset, tmp_path_factory.mktemp("dpo") / "run", sink)
    assert result.status == "completed" and result.global_step == 6
    return preset, sink, result


def test_dpo_steps_equal_trls_dpo_trainer_on_the_same_model_data_and_config(tiny_model_dir, pairs, tmp_path):
    """Our wiring, not TRL's loss, is under test: the same rendered pairs, LoRA and arguments
    handed to TRL's DPOTrainer directly give the same losses and rewards."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import DPOConfig, DPOTrainer

    from engine.data.preference import build_preference_datasets
    from engine.train import train

    preset = preference_preset("dpo", tiny_model_dir, pairs)
    sink = RecordingSink()
    result = train(preset, tmp_path / "engine", sink)
    assert result.status == "completed"
    events = " | ".join(text for _, text, _ in sink.of("event"))
    assert "reference: the base with the adapter switched off" in events

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bundle = build_preference_datasets(preset, tokenizer, seed=preset.data.shuffle_seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    set_seed(preset.training.seed)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    args = DPOConfig(
        output_dir=str(tmp_path / "direct"), per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=3,
        learning_rate=5e-3, lr_scheduler_type=preset.training.scheduler, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        seed=preset.training.seed, logging_steps=1, beta=0.1, loss_type=["sigmoid"], max_length=64, use_cpu=True,
        report_to="none", disable_tqdm=True, save_strategy="no", optim="adamw_torch",
        bf16=False, gradient_checkpointing=False,  # DPOConfig's defaults; the preset trains in fp32 without
    )
    logged: dict[int, dict] = {}

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logged[state.global_step] = dict(logs)

    direct = DPOTrainer(model=model, args=args, train_dataset=bundle.train, processing_class=tokenizer, callbacks=[Record()])
    direct.train()

    losses = sink.series("loss")
    assert sorted(losses) == [1, 2, 3]
    assert losses[1] == pytest.approx(logged[1]["loss"], rel=1e-5)  # ln 2: policy and reference agree at the start
    for step in (2, 3):
        assert losses[step] == pytest.approx(logged[step]["loss"], rel=1e-4)
        assert sink.series("rewards/margins")[step] == pytest.approx(logged[step]["rewards/margins"], rel=1e-3, abs=1e-6)


def test_dpo_cancel_and_resume_equal_the_straight_run(straight_dpo, tmp_path):
    from safetensors.torch import load_file

    from engine.train import train

    preset, straight, straight_result = straight_dpo
    run_dir = tmp_path / "run"
    cancelled = train(preset, run_dir, RecordingSink(stop_at=3, stop_reason="cancel"))
    assert cancelled.status == "cancelled" and cancelled.global_step == 4 and cancelled.final_dir is None
    sink = RecordingSink()
    resumed = train(preset, run_dir, sink, resume_from=run_dir)
    assert resumed.status == "completed" and sorted(sink.series("loss")) == [5, 6]
    for step in (5, 6):
        assert sink.series("loss")[step] == pytest.approx(straight.series("loss")[step], rel=1e-4)
    a = load_file(str(resumed.final_dir / "adapter_model.safetensors"))
    b = load_file(str(straight_result.final_dir / "adapter_model.safetensors"))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("stage", ["orpo", "simpo", "kto"])
def test_each_preference_stage_trains_and_saves_an_adapter(stage, tiny_model_dir, tmp_path):
    from engine.train import train

    data = pairs_file(tmp_path / "data.jsonl", unpaired=stage == "kto")
    sink = RecordingSink()
    result = train(preference_preset(stage, tiny_model_dir, data), tmp_path / "run", sink)
    assert result.status == "completed" and (result.final_dir / "adapter_model.safetensors").is_file()
    assert all(torch.isfinite(torch.tensor(value)) for value in sink.series("loss").values())
    metrics = set().union(*(values for _, values in sink.of("metrics")))
    assert "rewards/chosen" in metrics and "rewards/rejected" in metrics
    if stage == "kto":
        assert "kl" in metrics


def test_full_dpo_compares_with_a_frozen_copy(tiny_model_dir, pairs, tmp_path):
    from engine.train import train

    sink = RecordingSink()
    result = train(preference_preset("dpo", tiny_model_dir, pairs, "method.name=full", "training.lr=1e-4"), tmp_path / "run", sink)
    assert result.status == "completed" and (result.final_dir / "model.safetensors").is_file()
    events = " | ".join(text for _, text, _ in sink.of("event"))
    assert "reference: a frozen copy of the starting model" in events


def test_dpo_starts_from_an_sft_adapter_and_compares_with_it(straight_dpo, tiny_model_dir, pairs, tmp_path):
    """An earlier adapter is trained on; the reference is that adapter as it was (TRL's copy)."""
    from engine.train import train

    _, _, earlier = straight_dpo
    sink = RecordingSink()
    preset = preference_preset("dpo", tiny_model_dir, pairs, f"model.start_from={earlier.final_dir}", "training.max_steps=1")
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed"
    events = " | ".join(text for _, text, _ in sink.of("event"))
    assert f"start: training on the adapter in {earlier.final_dir}" in events
    assert "reference: the adapter of" in events
    assert sink.series("loss")[1] == pytest.approx(0.6931, abs=1e-3)  # the reference is where training starts


def test_start_from_a_folder_with_no_model_says_so(tiny_model_dir, pairs, tmp_path):
    from engine.errors import EngineError
    from engine.train import train

    (tmp_path / "empty").mkdir()
    preset = preference_preset("dpo", tiny_model_dir, pairs, f"model.start_from={tmp_path / 'empty'}")
    with pytest.raises(EngineError, match="holds neither an adapter"):
        train(preset, tmp_path / "run", RecordingSink())


def _sequence_logp(model, tokenizer, text: str) -> float:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    return float(torch.log_softmax(logits, -1).gather(-1, ids[:, 1:].unsqueeze(-1)).sum())


def test_eval_of_a_dpo_run_ranks_the_pairs_base_against_tuned(straight_dpo, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.data.preference import build_preference_datasets
    from engine.evaluate import run_eval, results_markdown
    from presets.schema import EvalPreset

    preset, _, result = straight_dpo
    evaluation = EvalPreset(name="eval", model=preset.model, adapter=str(result.final_dir), data=preset.data, stage="dpo")
    outcome = run_eval(evaluation, tmp_path / "eval", RecordingSink())
    scores = outcome.details["preference"]
    assert set(scores) == {"base", "finetuned"} and scores["base"]["pairs"] == len(WRONG)
    assert scores["finetuned"]["margin"] > scores["base"]["margin"]  # six DPO steps on these very pairs
    assert 0 <= scores["base"]["accuracy"] <= 1 and "preference accuracy" in results_markdown(outcome.details)

    # The base's margin, computed independently: whole-sequence log-probs, where the shared prompt cancels.
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    rows = build_preference_datasets(preset.model_copy(update={"data": preset.data.model_copy(update={"val_files": list(preset.data.train_files)})}),
                                     tokenizer).eval
    base = AutoModelForCausalLM.from_pretrained(preset.model.path).eval()
    margins = [_sequence_logp(base, tokenizer, r["prompt"] + r["chosen"]) - _sequence_logp(base, tokenizer, r["prompt"] + r["rejected"])
               for r in rows]
    assert scores["base"]["margin"] == pytest.approx(sum(margins) / len(margins), rel=1e-4)
    assert scores["base"]["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
