"""engine.evaluate on the tiny model: loss against an independent computation, batched greedy
generation against one-at-a-time, the adapter-disabled base against the plain base, the reports."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from engine.evaluate import eval_loss, generate_answers, run_eval  # noqa: E402
from engine.sink import Sink  # noqa: E402
from presets.schema import DataConfig, EvalPreset, ModelConfig  # noqa: E402


class RecordingSink(Sink):
    def __init__(self, stop_after=None):
        self.rows, self.events, self.started, self.stop_after = [], [], None, stop_after

    def run_started(self, info):
        self.started = info

    def metrics(self, step, values):
        self.rows.append((step, values))

    def event(self, level, text, step=None):
        self.events.append(text)

    def should_stop(self):
        return "cancel" if self.stop_after is not None and len(self.rows) >= self.stop_after else None


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(4)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    return out


def test_eval_loss_equals_the_token_weighted_mean_of_per_row_losses(tiny):
    from engine.data import make_collator

    model, tokenizer = tiny
    g = torch.Generator().manual_seed(0)
    rows = []
    for length in (5, 9, 14, 7):
        ids = torch.randint(3, 800, (length,), generator=g).tolist()
        labels = [-100] * (length // 2) + ids[length // 2:]  # only the second half supervised
        rows.append({"input_ids": ids, "labels": labels})
    got = eval_loss(model, rows, make_collator(tokenizer, packing=False, max_length=64), batch_size=3)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:  # one row at a time, no padding: HF's own mean loss per row
            out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            count = sum(1 for x in row["labels"][1:] if x != -100)
            total += out.loss.item() * count
            tokens += count
    assert got["tokens"] == tokens
    assert got["eval_loss"] == pytest.approx(total / tokens, abs=1e-5)
    assert got["perplexity"] == pytest.approx(torch.exp(torch.tensor(total / tokens)).item(), rel=1e-5)


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer(t)["input_ids"] for t in ("What is the capital of France?", "Hello", "The river follows the old bridge")]
    stop = {tokenizer.eos_token_id}
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, stop_ids=stop)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=8, batch_size=1, stop_ids=stop)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(a, str) and a for a in batched)


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_answers_equal_greedy_decoding(tiny_model_dir, tmp_path, kind):
    """Prompt learning does not go through generate() (wrong for it on transformers 5.24 + peft 0.21)."""
    from helpers.chat import greedy_without_cache, make_adapter
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(tiny_model_dir, tmp_path / kind, kind, seed=3)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(t)["input_ids"] for t in ("What is the capital of France?", "Hello", "The river")]
    stop = {tokenizer.eos_token_id}
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=2, stop_ids=stop)
    for prompt, answer in zip(prompts, answers):
        expected = greedy_without_cache(model, prompt, 8)
        cut = next((i for i, t in enumerate(expected) if t in stop), len(expected))
        assert answer == tokenizer.decode(expected[:cut], skip_special_tokens=True).strip()


def _preset(tiny_model_dir, data_file, **fields):
    settings = dict(num_samples=4, max_new_tokens=12, batch_size=4) | fields
    return EvalPreset(
        name="e", model=ModelConfig(path=str(tiny_model_dir), dtype="fp32"),
        data=DataConfig(train_files=[str(data_file)], format="alpaca", val_ratio=0.1, max_length=64), **settings,
    )


def test_run_eval_adapter_side_by_side_with_the_base(tiny_model_dir, demo_data_file, lora_adapter, tmp_path):
    sink = RecordingSink()
    outcome = run_eval(_preset(tiny_model_dir, demo_data_file, adapter=str(lora_adapter)), tmp_path / "out", sink)
    results = outcome.details
    assert outcome.status == "completed" and results["sides"] == ["base", "finetuned"]
    assert results["target"]["kind"] == "adapter"
    assert results["dataset"]["split"] == "validation split" and results["dataset"]["rows"] == 6
    assert len(results["samples"]) == 4
    # The base side is the adapter model with the adapter disabled: it must equal the plain base.
    base_only = run_eval(_preset(tiny_model_dir, demo_data_file), tmp_path / "base", RecordingSink()).details
    assert base_only["sides"] == ["base"]
    assert results["loss"]["base"]["eval_loss"] == pytest.approx(base_only["loss"]["base"]["eval_loss"], abs=1e-6)
    assert [s["base"]["output"] for s in results["samples"]] == [s["base"]["output"] for s in base_only["samples"]]
    assert results["loss"]["finetuned"]["eval_loss"] != pytest.approx(results["loss"]["base"]["eval_loss"], abs=1e-3)
    # Reports, and the metrics the sink got (the job's store rows).
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["loss"] == results["loss"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| eval loss |" in markdown and "| exact match |" in markdown and "## Samples" in markdown
    final = sink.rows[-1][1]
    assert final["eval_loss"] == results["loss"]["finetuned"]["eval_loss"]
    assert final["base_eval_loss"] == results["loss"]["base"]["eval_loss"]
    assert {"exact_match", "token_f1", "rouge_l", "bleu", "base_bleu"} <= set(final)
    assert sink.started["total_steps"] == sink.rows[-2][0], "progress reaches the announced total"


def test_run_eval_on_every_row_of_a_file_and_cancel(tiny_model_dir, demo_data_file, lora_adapter, tmp_path):
    preset = _preset(tiny_model_dir, demo_data_file, adapter=str(lora_adapter), compare_base=False)
    preset = preset.model_copy(update={"data": preset.data.model_copy(update={"val_ratio": 0.0})})
    stopped = run_eval(preset, tmp_path / "out", RecordingSink(stop_after=1))
    assert (stopped.status, stopped.stop_reason) == ("cancelled", "cancel")
    assert not (tmp_path / "out" / "results.json").exists()
    results = run_eval(preset.model_copy(update={"num_samples": 2}), tmp_path / "out", RecordingSink()).details
    assert results["sides"] == ["finetuned"] and results["dataset"]["split"] == "all rows"
    assert results["dataset"]["rows"] == 56 and len(results["samples"]) == 2


def test_run_eval_full_model_and_prompt_tuning_adapter(tiny_model_dir, demo_data_file, tmp_path):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)  # a "fine-tune" that changes the logits
    model.save_pretrained(tmp_path / "full")
    full = run_eval(_preset(tiny_model_dir, demo_data_file, adapter=str(tmp_path / "full"), num_samples=1), tmp_path / "o1", RecordingSink()).details
    assert full["target"]["kind"] == "full model"
    assert full["loss"]["finetuned"]["eval_loss"] != pytest.approx(full["loss"]["base"]["eval_loss"], abs=1e-3)

    prompt = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    prompt.save_pretrained(tmp_path / "prompt")
    tuned = run_eval(_preset(tiny_model_dir, demo_data_file, adapter=str(tmp_path / "prompt"), num_samples=1), tmp_path / "o2", RecordingSink()).details
    assert tuned["loss"]["base"]["eval_loss"] == pytest.approx(full["loss"]["base"]["eval_loss"], abs=1e-6)
    assert tuned["loss"]["finetuned"]["tokens"] == tuned["loss"]["base"]["tokens"]


def test_run_eval_explains_missing_pieces(tiny_model_dir, demo_data_file, tmp_path):
    from engine.errors import EngineError

    with pytest.raises(EngineError, match="no such directory"):
        run_eval(_preset(tiny_model_dir, demo_data_file, adapter=str(tmp_path / "nope")), tmp_path / "o", RecordingSink())
    with pytest.raises(EngineError, match="has no dataset"):
        run_eval(EvalPreset(name="e", model=ModelConfig(path=str(tiny_model_dir))), tmp_path / "o", RecordingSink())
