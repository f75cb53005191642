"""engine.train on the tiny model (CPU): metrics through the sink, resume, cancel, the keep policy,
early stopping with load-best, NaN, and the messages for bad input."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from helpers.training import RecordingSink, jsonl_records, tiny_preset

# 12 training samples (max_samples applies after the 25 % validation split), batch 4: three steps
# per epoch, so step 4 is mid-epoch.
RESUMABLE = [
    "data.val_ratio=0.25",
    "data.max_samples=12",
    "training.max_steps=8",
    "training.save_steps=4",
    "training.eval_steps=4",
    "training.keep_last=null",
    "training.lr=2e-3",
]


def _adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _train_split(preset, tiny_model_dir):
    from transformers import AutoTokenizer

    from engine.data import build_datasets

    return build_datasets(preset.data, AutoTokenizer.from_pretrained(tiny_model_dir), seed=preset.data.shuffle_seed).train


def _assert_same_tensors(a: dict, b: dict, **tolerance):
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], **tolerance)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, demo_data_file, tmp_path_factory):
    from engine.train import train

    sink = RecordingSink()
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, *RESUMABLE)
    result = train(preset, tmp_path_factory.mktemp("straight") / "run", sink)
    assert result.status == "completed" and result.global_step == 8
    return preset, sink, result


# --------------------------------------------------------------------------- metrics


def test_metrics_reach_the_sink_and_metrics_jsonl(uninterrupted, tiny_model_dir):
    preset, sink, result = uninterrupted
    started = sink.of("run_started")[0][0]
    assert started["total_steps"] == 8 and started["train_samples"] == 12 and started["eval_samples"] == 14
    assert started["method"] == "lora" and started["precision"] == "fp32" and started["device"] == "cpu"

    logged = [values for _, values in sink.of("metrics") if "loss" in values]
    assert len(logged) == 8  # logging_steps=1
    for values in logged:
        assert {"loss", "grad_norm", "lr", "epoch", "tokens_per_s", "samples_per_s", "tokens_seen"} <= set(values)
        assert values["tokens_per_s"] > 0 and values["samples_per_s"] > 0
    evals = {step: values for step, values in sink.of("metrics") if "eval_loss" in values}
    assert sorted(evals) == [4, 8]
    for values in evals.values():
        assert values["eval_ppl"] == pytest.approx(math.exp(values["eval_loss"]))

    # Tokens are counted on the device and read at logging steps: after one epoch (step 3), every
    # training token has been seen exactly once.
    assert sink.series("tokens_seen")[3] == sum(len(sample["input_ids"]) for sample in _train_split(preset, tiny_model_dir))
    assert sink.series("lr")[8] < sink.series("lr")[2]  # cosine schedule decays

    saved = [step for step, _, _ in sink.of("checkpoint")]
    assert saved == [4, 8]
    step, path, metrics = sink.of("checkpoint")[0]
    assert path.endswith("checkpoint-4") and metrics["eval_loss"] == evals[4]["eval_loss"] and "loss" in metrics

    # metrics.jsonl holds what the sink got.
    records = jsonl_records(result.run_dir, "metrics")
    assert [r["loss"] for r in records if "loss" in r] == [v["loss"] for v in logged]
    assert (result.run_dir / "preset.yaml").is_file() and (result.final_dir / "adapter_config.json").is_file()
    assert not list(result.run_dir.glob(".final*"))


def test_packed_batches_train_and_count_samples(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train

    # 16 samples packed into rows of up to 64 tokens, 8 rows per batch: 2 steps, 2 epochs.
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "data.packing=true", "training.batch_size=8", "training.max_steps=2")
    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed"
    logged = [values for _, values in sink.of("metrics") if "loss" in values]
    assert all(math.isfinite(v["loss"]) and v["samples_per_s"] > 0 for v in logged)
    # Packed rows have no attention mask: the count leaves out the padding at row ends, so it is
    # every real token of the epoch (engine.callback.count_batch).
    rows = _train_split(preset, tiny_model_dir)  # packed ahead (data.packing_strategy: dataset)
    real = sum(len(row["input_ids"]) for row in rows)
    assert len(rows) <= 8  # one batch is the whole epoch
    assert sink.series("tokens_seen")[1] == real and sink.series("tokens_seen")[2] == 2 * real
    # The run says which attention kernel it uses, and why (engine.attention).
    assert any(text.startswith("attention: sdpa (CPU") for _, text, _ in sink.of("event"))


# --------------------------------------------------------------------------- resume and cancel


def test_resume_from_the_half_way_checkpoint_matches_the_uninterrupted_run(uninterrupted, tmp_path):
    from engine.train import train

    preset, straight, straight_result = uninterrupted
    sink = RecordingSink()
    resumed = train(preset, tmp_path / "resumed", sink, resume_from=straight_result.run_dir / "checkpoints" / "checkpoint-4")
    assert resumed.status == "completed" and resumed.global_step == 8
    assert sink.of("run_started")[0][0]["start_step"] == 4
    assert sorted(sink.series("loss")) == [5, 6, 7, 8]
    for step in (5, 6, 7, 8):  # optimizer, scheduler, RNG (dropout) and data position all restored
        assert sink.series("loss")[step] == pytest.approx(straight.series("loss")[step], rel=1e-4)
        assert sink.series("lr")[step] == pytest.approx(straight.series("lr")[step], rel=1e-6)
        assert sink.series("tokens_seen")[step] == straight.series("tokens_seen")[step]
    assert sink.series("eval_loss")[8] == pytest.approx(straight.series("eval_loss")[8], rel=1e-4)
    _assert_same_tensors(_adapter_tensors(resumed.final_dir), _adapter_tensors(straight_result.final_dir), atol=1e-5, rtol=1e-4)


def test_cancel_saves_a_checkpoint_and_the_run_resumes_from_it(uninterrupted, tiny_model_dir, demo_data_file, tmp_path):
    from engine.artifacts import RunArtifacts
    from engine.train import train

    preset, straight, straight_result = uninterrupted
    run_dir = tmp_path / "run"
    sink = RecordingSink(stop_at=5, stop_reason="cancel")
    cancelled = train(preset, run_dir, sink)
    # Asked after step 5 was logged, honoured at the next step boundary, with a checkpoint saved.
    assert cancelled.status == "cancelled" and cancelled.stop_reason == "cancel" and cancelled.global_step == 6
    assert cancelled.final_dir is None and not (run_dir / "final").exists()
    assert cancelled.last_checkpoint == run_dir / "checkpoints" / "checkpoint-6"
    assert RunArtifacts(run_dir).latest_checkpoint() == cancelled.last_checkpoint
    assert [step for step, _, _ in sink.of("checkpoint")] == [4, 6]

    interrupted = train(preset, tmp_path / "other", RecordingSink(stop_at=1, stop_reason="interrupt"))
    assert interrupted.status == "interrupted" and interrupted.last_checkpoint is not None

    resumed_sink = RecordingSink()
    resumed = train(preset, run_dir, resumed_sink, resume_from=run_dir)  # a run folder: its latest checkpoint
    assert resumed.status == "completed" and sorted(resumed_sink.series("loss")) == [7, 8]
    assert resumed_sink.series("loss")[8] == pytest.approx(straight.series("loss")[8], rel=1e-4)
    _assert_same_tensors(_adapter_tensors(resumed.final_dir), _adapter_tensors(straight_result.final_dir), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- keep policy, early stopping


def test_keep_policy_prunes_to_the_last_and_the_best(tiny_model_dir, demo_data_file, tmp_path):
    from engine.artifacts import RunArtifacts
    from engine.train import train

    preset = tiny_preset(
        "lora", tiny_model_dir, demo_data_file, "data.val_ratio=0.25", "training.max_steps=8", "training.save_steps=2",
        "training.eval_steps=2", "training.keep_last=1", "training.keep_best=true", "training.lr=0.05",
    )
    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    evals = sink.series("eval_loss")
    best = min(evals, key=evals.get)
    on_disk = set(RunArtifacts(result.run_dir).checkpoints())
    assert on_disk == {8, best}
    assert result.best_checkpoint.name == f"checkpoint-{best}" and result.best_eval_loss == evals[best]
    saved = [step for step, _, _ in sink.of("checkpoint")]
    removed = [step for step, _ in sink.of("checkpoint_removed")]
    assert saved == [2, 4, 6, 8]
    assert sorted(removed) == sorted(set(saved) - on_disk)
    assert [r["step"] for r in jsonl_records(result.run_dir, "checkpoint_removed")] == removed


def test_early_stopping_ends_the_run_and_the_best_checkpoint_is_the_result(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train

    # A learning rate far too high: eval loss improves at first, then climbs.
    preset = tiny_preset(
        "lora", tiny_model_dir, demo_data_file, "data.val_ratio=0.25", "training.max_steps=20", "training.save_steps=100",
        "training.eval_steps=1", "training.keep_last=1", "training.lr=0.5", "training.early_stopping_patience=2",
        "training.load_best_at_end=true", "doctor.stop_on_nan=false", "doctor.stop_on_divergence=false",
    )
    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "stopped" and result.stop_reason == "early_stop" and result.global_step < 20
    evals = sink.series("eval_loss")
    best = min(evals, key=evals.get)
    assert best == result.global_step - 2  # two evaluations without improvement
    # Each new best was saved (the keep policy needs it on disk), whatever save_steps says.
    assert result.best_checkpoint.name == f"checkpoint-{best}"
    # Two steps at this learning rate moved the weights: equal tensors mean the best was loaded.
    _assert_same_tensors(_adapter_tensors(result.final_dir), _adapter_tensors(result.best_checkpoint), atol=0, rtol=0)
    assert any("early stopping" in text for _, text, _ in sink.of("event"))


def test_nan_loss_is_recorded_and_stops_the_run(tiny_model_dir, demo_data_file, tmp_path):
    pytest.importorskip("engine.doctor.live")
    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "training.max_steps=10", "training.lr=1e30", "training.max_grad_norm=0", "doctor.stop_on_nan=true")
    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "stopped" and result.global_step < 10 and result.final_dir is None
    assert any(not math.isfinite(v) for v in sink.series("loss").values())
    findings = [f for (f,) in sink.of("finding") if f["stop"]]
    assert findings and findings[0]["rule"] == result.stop_reason
    assert any(r["type"] == "finding" for r in jsonl_records(result.run_dir))


# --------------------------------------------------------------------------- bad input


def test_missing_model_path_says_so_and_writes_no_result(tiny_model_dir, demo_data_file, tmp_path):
    from engine.errors import EngineError
    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, f"model.path={tmp_path / 'no-such-model'}")
    with pytest.raises(EngineError, match="no such directory") as caught:
        train(preset, tmp_path / "run", RecordingSink())
    assert "make-tiny-model" in caught.value.advice
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl", "preset.yaml"]
    assert jsonl_records(tmp_path / "run", "event")[-1]["level"] == "error"


def test_max_length_past_the_models_positions_quotes_the_model(tiny_model_dir, demo_data_file, tmp_path):
    from engine.errors import EngineError
    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "data.max_length=4096")
    with pytest.raises(EngineError, match="data.max_length is 4096") as caught:
        train(preset, tmp_path / "run", RecordingSink())
    assert "positions for 2048 tokens" in caught.value.message and "2048 or less" in caught.value.advice
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_unknown_hub_id_offline_says_offline(tiny_model_dir, demo_data_file, monkeypatch):
    from engine.errors import EngineError
    from engine.models import load_tokenizer
    from presets.schema import ModelConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(EngineError, match="offline"):
        load_tokenizer(ModelConfig(path="tunebench-nobody/no-such-model"))


def test_target_modules_that_do_not_exist_list_those_that_do(tiny_model_dir, demo_data_file, tmp_path):
    from engine.errors import EngineError
    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "method.lora.target_modules=[q_proj, query_key_value]")
    with pytest.raises(EngineError) as caught:
        train(preset, tmp_path / "run", RecordingSink())
    message = str(caught.value)
    assert "query_key_value" in message and "q_proj" not in message.split("not found")[0]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in message


def test_4bit_without_a_working_bitsandbytes_is_refused(tiny_model_dir, demo_data_file, monkeypatch):
    from engine.errors import EngineError
    from engine.models import load_model

    preset = tiny_preset("qlora", tiny_model_dir, demo_data_file)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(EngineError, match="bitsandbytes") as caught:
        load_model(preset.model, precision="fp32", for_training=True)
    assert "quantization.mode: none" in caught.value.advice


def test_fp16_on_the_cpu_is_refused():
    from engine.errors import EngineError
    from engine.models import resolve_precision

    with pytest.raises(EngineError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_out_of_memory_names_the_knobs(tiny_model_dir, demo_data_file, tmp_path, monkeypatch):
    from transformers import Trainer

    from engine.errors import EngineError
    from engine.train import train

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "train", out_of_memory)
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file)
    with pytest.raises(EngineError, match="out of memory") as caught:
        train(preset, tmp_path / "run", RecordingSink())
    for knob in ("batch_size", "max_length", "gradient_checkpointing", "qlora"):
        assert knob in caught.value.advice
    assert not (tmp_path / "run" / "final").exists()


# --------------------------------------------------------------------------- the CLI


def test_cli_train_and_make_tiny_model(tiny_model_dir, demo_data_file, tmp_path, capsys):
    from tui.cli import main

    model_dir = tmp_path / "tiny"
    assert main(["make-tiny-model", str(model_dir)]) == 0
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()

    overrides = [f"model.path={model_dir}", f"data.train_files={demo_data_file}", "data.max_samples=8", "data.max_length=64",
                 "data.val_ratio=0", "training.max_steps=2", "training.batch_size=4", "training.logging_steps=1"]
    args = ["-w", str(tmp_path / "ws"), "train", "lora", "--output", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").is_file()
    assert "completed" in capsys.readouterr().out

    bad = ["-w", str(tmp_path / "ws"), "train", "lora", "--output", str(tmp_path / "bad"), "--set", f"model.path={tmp_path / 'nope'}"]
    assert main(bad + [f"--set={item}" for item in overrides[1:]]) == 2
    err = " ".join(capsys.readouterr().err.split())  # Rich wraps long lines
    assert "no such directory" in err and "make-tiny-model" in err and "Traceback" not in err
