"""`tunebench presets import`: LLaMA-Factory, axolotl and mergekit configs, written by hand in each
tool's documented format (LLaMA-Factory examples/train_lora/*.yaml and data/dataset_info.json,
axolotl examples/llama-3/*.yml, mergekit's README), become presets; what cannot be mapped is listed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from presets.importers import AXOLOTL, LLAMA_FACTORY, MERGEKIT, ImportProblem, import_config

# examples/train_lora/llama3_lora_sft.yaml, with two datasets of our own and a QLoRA base
LLAMA_FACTORY_SFT = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true
quantization_bit: 4

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: all

### dataset
dataset: support_alpaca,chats_sharegpt
dataset_dir: data
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine_with_min_lr
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""

DATASET_INFO = {
    "support_alpaca": {
        "file_name": "support.json",
        "columns": {"prompt": "question", "query": "context", "response": "answer", "system": "sys", "history": "earlier"},
    },
    "chats_sharegpt": {
        "file_name": "chats.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"},
    },
    "pairs": {"file_name": "pairs.json", "ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}},
}

# examples/llama-3/qlora.yml
AXOLOTL_QLORA = """\
base_model: NousResearch/Meta-Llama-3-8B
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: tatsu-lab/alpaca
    type: alpaca
dataset_prepared_path:
val_set_size: 0
output_dir: ./outputs/qlora-out

adapter: qlora
lora_model_dir:

sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true

lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
lora_target_linear: true
lora_fan_in_fan_out:

wandb_project:
wandb_entity:

gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002

train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false

gradient_checkpointing: true
early_stopping_patience:
logging_steps: 1
xformers_attention:
flash_attention: true

warmup_steps: 10
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
special_tokens:
  pad_token: "<|end_of_text|>"
"""

# examples/llama-3/lora-1b.yml with a local chat_template dataset (docs: dataset formats / conversation)
AXOLOTL_LORA_CHAT = """\
base_model: NousResearch/Llama-3.2-1B
datasets:
  - path: data/chats.jsonl
    type: chat_template
    field_messages: conversations
    message_property_mappings:
      role: from
      content: value
    roles:
      user: [human]
      assistant: [gpt]
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
val_set_size: 0.1
adapter: lora
sequence_len: 2048
sample_packing: false
lora_r: 16
lora_alpha: 32
lora_dropout: 0.05
lora_target_modules:
  - q_proj
  - v_proj
gradient_accumulation_steps: 2
micro_batch_size: 2
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: linear
learning_rate: 0.0002
warmup_ratio: 0.05
bf16: true
gradient_checkpointing: false
wandb_project: my-runs
"""

# mergekit's README: a slerp with per-filter gradients, and a passthrough "frankenmerge"
MERGEKIT_SLERP = """\
slices:
  - sources:
      - model: models/a
        layer_range: [0, 32]
      - model: models/b
        layer_range: [0, 32]
merge_method: slerp
base_model: models/a
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
"""

MERGEKIT_PASSTHROUGH = """\
slices:
  - sources:
      - model: meta-llama/Meta-Llama-3-8B-Instruct
        layer_range: [0, 20]
  - sources:
      - model: meta-llama/Meta-Llama-3-8B-Instruct
        layer_range: [12, 32]
merge_method: passthrough
dtype: float16
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def llama_factory(tmp_path) -> Path:
    """LLaMA-Factory's layout: examples/train_lora/<config>.yaml, data/dataset_info.json at the root."""
    root = tmp_path / "LLaMA-Factory"
    _write(root / "data", "dataset_info.json", json.dumps(DATASET_INFO))
    for name in ("support.json", "chats.json"):
        _write(root / "data", name, "[]")
    return _write(root / "examples" / "train_lora", "llama3_qlora_sft.yaml", LLAMA_FACTORY_SFT)


def _reasons(imported) -> dict[str, str]:
    return {item.key: item.reason for item in imported.unmapped}


def test_llama_factory_sft_config_becomes_a_train_preset(llama_factory, tmp_path):
    imported = import_config(llama_factory, cwd=tmp_path)
    preset = imported.preset
    assert imported.tool == LLAMA_FACTORY and preset.name == "llama3_qlora_sft"
    data_dir = llama_factory.parents[2] / "data"
    assert preset.model.path == "meta-llama/Meta-Llama-3-8B-Instruct" and preset.model.trust_remote_code
    assert (preset.method.name, preset.model.quantization.mode) == ("qlora", "4bit")
    assert (preset.method.lora.r, preset.method.lora.alpha, preset.method.lora.target_modules) == (16, 32, "all-linear")
    # the first dataset's dataset_info.json entry: file, alpaca formatting and its columns
    assert preset.data.train_files == [str(data_dir / "support.json")]
    assert preset.data.format == "alpaca"
    columns = preset.data.columns
    assert (columns.instruction, columns.input, columns.output, columns.system, columns.history) == ("question", "context", "answer", "sys", "earlier")
    assert (preset.data.chat_template, preset.data.max_length, preset.data.max_samples, preset.data.val_ratio) == ("llama3", 2048, 1000, 0.1)
    training = preset.training
    assert (training.batch_size, training.grad_accum, training.lr, training.epochs) == (1, 8, 1e-4, 3.0)
    assert (training.warmup_ratio, training.precision, training.logging_steps, training.save_steps, training.eval_steps) == (0.1, "bf16", 10, 500, 500)

    reasons = _reasons(imported)
    assert "cosine_with_min_lr" in reasons["lr_scheduler_type"] and training.scheduler == "cosine"
    assert "format or columns differ" in reasons["dataset: chats_sharegpt"]
    assert reasons["output_dir"].startswith("not needed") and "per_device_eval_batch_size" in reasons
    assert "eval_strategy" in reasons
    for mapped in ("learning_rate", "cutoff_len", "template", "lora_target", "quantization_bit", "finetuning_type", "stage"):
        assert mapped not in reasons and mapped in imported.mapped
    # what is saved loads back as the same preset
    from presets import load_preset_text

    assert load_preset_text(imported.text, "saved") == preset


def test_llama_factory_sharegpt_tags_and_preference_data(llama_factory, tmp_path):
    text = LLAMA_FACTORY_SFT.replace("dataset: support_alpaca,chats_sharegpt", "dataset: chats_sharegpt,pairs,missing")
    text = text.replace("quantization_bit: 4\n", "").replace("finetuning_type: lora", "finetuning_type: lora\nuse_dora: true")
    config = _write(llama_factory.parent, "chats.yaml", text)
    imported = import_config(config, name="chats", cwd=tmp_path)
    data = imported.preset.data
    assert imported.preset.method.name == "dora" and imported.preset.model.quantization.mode == "none"
    assert data.format == "sharegpt" and data.columns.conversations == "messages"
    tags = data.tags
    assert (tags.role_key, tags.content_key, tags.user, tags.assistant, tags.system) == ("role", "content", "user", "assistant", "system")
    reasons = _reasons(imported)
    assert "preference" in reasons["dataset: pairs"]
    assert "not in" in reasons["dataset: missing"] and "dataset_info.json" in reasons["dataset: missing"]


def test_llama_factory_without_dataset_info_says_where_it_looked(tmp_path):
    config = _write(tmp_path / "lonely", "sft.yaml", LLAMA_FACTORY_SFT)
    with pytest.raises(ImportProblem, match=r"no dataset_info\.json was found \(looked in .*lonely/data"):
        import_config(config, cwd=tmp_path)


def test_llama_factory_dpo_stage_is_refused(llama_factory, tmp_path):
    config = _write(llama_factory.parent, "dpo.yaml", LLAMA_FACTORY_SFT.replace("stage: sft", "stage: dpo"))
    with pytest.raises(ImportProblem, match="stage dpo"):
        import_config(config, cwd=tmp_path)


def test_axolotl_qlora_example_becomes_a_train_preset(tmp_path):
    config = _write(tmp_path / "examples", "qlora.yml", AXOLOTL_QLORA)
    imported = import_config(config, cwd=tmp_path)
    preset = imported.preset
    assert imported.tool == AXOLOTL and preset.name == "qlora"
    assert preset.model.path == "NousResearch/Meta-Llama-3-8B" and preset.model.attn_implementation == "flash_attention_2"
    assert (preset.method.name, preset.model.quantization.mode) == ("qlora", "4bit")
    assert (preset.method.lora.r, preset.method.lora.alpha, preset.method.lora.dropout) == (32, 16, 0.05)
    assert preset.method.lora.target_modules == "all-linear"
    assert preset.data.train_files == ["tatsu-lab/alpaca"] and preset.data.format == "alpaca"
    assert (preset.data.max_length, preset.data.packing, preset.data.val_ratio, preset.data.assistant_only_loss) == (4096, True, 0.0, True)
    training = preset.training
    assert (training.batch_size, training.grad_accum, training.epochs, training.lr) == (2, 4, 4.0, 2e-4)
    assert (training.optimizer, training.scheduler, training.warmup_steps, training.precision) == ("paged_adamw_32bit", "cosine", 10, "auto")
    assert training.gradient_checkpointing is True
    reasons = _reasons(imported)
    assert set(reasons) >= {"model_type", "tokenizer_type", "strict", "output_dir", "pad_to_sequence_len", "group_by_length",
                            "evals_per_epoch", "saves_per_epoch", "special_tokens", "tf32"}
    # keys left empty in the file are unset settings, not problems
    assert not {"wandb_project", "fp16", "lora_model_dir", "dataset_prepared_path"} & set(reasons)


def test_axolotl_chat_template_dataset_maps_fields_and_roles(tmp_path):
    _write(tmp_path / "project" / "data", "chats.jsonl", "")
    config = _write(tmp_path / "project", "lora.yml", AXOLOTL_LORA_CHAT)
    imported = import_config(config, cwd=tmp_path)
    preset = imported.preset
    assert preset.method.name == "lora" and preset.method.lora.target_modules == ["q_proj", "v_proj"]
    data = preset.data
    assert data.train_files == [str(tmp_path / "project" / "data" / "chats.jsonl")]  # local: made absolute
    assert data.format == "messages" and data.columns.conversations == "conversations"
    assert (data.tags.role_key, data.tags.content_key, data.tags.user, data.tags.assistant) == ("from", "value", "human", "gpt")
    assert (data.val_ratio, data.packing) == (0.1, False)
    assert (preset.training.optimizer, preset.training.scheduler, preset.training.precision) == ("adamw_8bit", "linear", "bf16")
    reasons = _reasons(imported)
    assert "differ from datasets[0]" in reasons["datasets[1]"]
    assert "report_to" in reasons["wandb_project"]


def test_axolotl_without_adapter_is_a_full_fine_tune(tmp_path):
    config = _write(tmp_path, "fft.yml", "base_model: org/model\ndatasets:\n  - path: org/data\n    type: completion\n    field: body\n")
    preset = import_config(config, cwd=tmp_path).preset
    assert preset.method.name == "full" and preset.data.format == "text" and preset.data.columns.text == "body"


def test_mergekit_configs_become_merge_presets_as_they_are(tmp_path):
    (tmp_path / "models" / "a").mkdir(parents=True)
    config = _write(tmp_path, "slerp.yaml", MERGEKIT_SLERP)
    imported = import_config(config, cwd=tmp_path)
    preset = imported.preset
    assert imported.tool == MERGEKIT and (preset.kind, preset.method, preset.dtype) == ("merge", "mergekit", "bf16")
    original = yaml.safe_load(MERGEKIT_SLERP)
    sources = preset.mergekit["slices"][0]["sources"]
    assert sources[0]["model"] == str(tmp_path / "models" / "a")  # a local folder: made absolute
    assert sources[1]["model"] == "models/b"  # not here: left as written (a hub id, or resolved by mergekit)
    assert preset.mergekit["parameters"] == original["parameters"]  # gradients as they are
    passthrough = import_config(_write(tmp_path, "frankenmerge.yaml", MERGEKIT_PASSTHROUGH), cwd=tmp_path).preset
    assert passthrough.dtype == "fp16" and passthrough.mergekit == yaml.safe_load(MERGEKIT_PASSTHROUGH)


def test_unknown_files_are_refused_with_what_is_accepted(tmp_path):
    config = _write(tmp_path, "mystery.yaml", "foo: 1\nbar: 2\n")
    with pytest.raises(ImportProblem, match="cannot tell which tool wrote this file") as info:
        import_config(config)
    assert "axolotl" in info.value.advice and "mergekit" in info.value.advice


def test_cli_import_saves_the_preset_and_lists_unmapped_keys(cli, workspace, tmp_path):
    config = _write(tmp_path / "examples", "qlora.yml", AXOLOTL_QLORA)
    code, out = cli("presets", "import", str(config), "--name", "from-axolotl")
    assert code == 0, out
    assert "(axolotl)" in out and "not mapped" in out
    assert "model_type: not needed: tunebench loads every model with AutoModelForCausalLM" in out
    assert (workspace.root / "presets" / "from-axolotl.yaml").is_file()
    code, out = cli("presets", "validate", "from-axolotl")
    assert code == 0 and "valid train preset" in out
    code, out = cli("presets", "import", str(config), "--name", "from-axolotl")
    assert code != 0 and "exists already" in out


def test_merge_verb_queues_a_mergekit_yaml_as_it_is(cli, workspace, tmp_path):
    from jobs.store import open_store

    from presets.extras import is_installed

    if not is_installed("mergekit"):  # found, not imported: it would import torch into the unit tier
        pytest.skip("a multi-model merge preset needs the merge extra")
    (tmp_path / "cwd" / "models" / "a").mkdir(parents=True)
    recipe = _write(tmp_path / "cwd", "frankenmerge.yaml", MERGEKIT_PASSTHROUGH)
    code, out = cli("merge", str(recipe), "--no-engine", "--dtype", "bf16")
    assert code == 0, out
    run = open_store(workspace).list_runs()[0]
    frozen = yaml.safe_load(run.preset_yaml)
    assert (run.kind, frozen["method"], frozen["dtype"]) == ("merge", "mergekit", "bf16")  # --dtype wins over the file's
    assert frozen["mergekit"] == yaml.safe_load(MERGEKIT_PASSTHROUGH)
