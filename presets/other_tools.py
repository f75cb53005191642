"""Key names users bring from other fine-tuning tools, and what tunebench calls them.

Hugging Face TrainingArguments (and TRL's SFTConfig, PEFT's LoraConfig, BitsAndBytesConfig),
LLaMA-Factory and axolotl name the same settings differently. The loader looks up the last part of
an unknown key here, whatever section it stands in, so `training.learning_rate` or a top-level
`learning_rate` both point at `training.lr`. Every value is a key path of our schema
(tests/unit/test_preset_inputs.py checks that each one exists).
"""

from __future__ import annotations

KEYS_FROM_OTHER_TOOLS: dict[str, str] = {
    # optimisation (TrainingArguments, axolotl)
    "learning_rate": "training.lr",
    "num_train_epochs": "training.epochs",
    "num_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "per_device_train_batch_size": "training.batch_size",
    "micro_batch_size": "training.batch_size",
    "train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.grad_accum",
    "lr_scheduler_type": "training.scheduler",
    "lr_scheduler": "training.scheduler",
    "warmup_ratio": "training.warmup_ratio",
    "warmup_steps": "training.warmup_steps",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "optim": "training.optimizer",
    "optimizer": "training.optimizer",
    "gradient_checkpointing": "training.gradient_checkpointing",
    "bf16": "training.precision",
    "fp16": "training.precision",
    "seed": "training.seed",
    "logging_steps": "training.logging_steps",
    "eval_steps": "training.eval_steps",
    "save_steps": "training.save_steps",
    "save_total_limit": "training.keep_last",
    "load_best_model_at_end": "training.load_best_at_end",
    "early_stopping_patience": "training.early_stopping_patience",
    "neftune_noise_alpha": "training.neftune_noise_alpha",
    # data (LLaMA-Factory, axolotl, TRL)
    "cutoff_len": "data.max_length",
    "sequence_len": "data.max_length",
    "max_seq_length": "data.max_length",
    "max_seq_len": "data.max_length",
    "max_length": "data.max_length",
    "dataset": "data.train_files",
    "datasets": "data.train_files",
    "data_files": "data.train_files",
    "val_size": "data.val_ratio",
    "val_set_size": "data.val_ratio",
    "packing": "data.packing",
    "sample_packing": "data.packing",
    "max_samples": "data.max_samples",
    "template": "data.chat_template",
    "chat_template": "data.chat_template",
    "default_system": "data.system_prompt",
    "system_prompt": "data.system_prompt",
    "dataset_text_field": "data.columns.text",
    # model
    "model_name_or_path": "model.path",
    "base_model": "model.path",
    "torch_dtype": "model.dtype",
    "trust_remote_code": "model.trust_remote_code",
    "revision": "model.revision",
    "flash_attn": "model.attn_implementation",
    "flash_attention": "model.attn_implementation",
    "attn_implementation": "model.attn_implementation",
    "quantization_bit": "model.quantization.mode",
    "load_in_4bit": "model.quantization.mode",
    "load_in_8bit": "model.quantization.mode",
    "quantization_type": "model.quantization.quant_type",
    "bnb_4bit_quant_type": "model.quantization.quant_type",
    "double_quantization": "model.quantization.double_quant",
    "bnb_4bit_use_double_quant": "model.quantization.double_quant",
    "bnb_4bit_compute_dtype": "model.quantization.compute_dtype",
    # method (LLaMA-Factory, axolotl, PEFT)
    "finetuning_type": "method.name",
    "adapter": "method.name",
    "use_dora": "method.name",
    "use_rslora": "method.name",
    "lora_rank": "method.lora.r",
    "lora_r": "method.lora.r",
    "r": "method.lora.r",
    "lora_alpha": "method.lora.alpha",
    "lora_dropout": "method.lora.dropout",
    "lora_target": "method.lora.target_modules",
    "lora_target_modules": "method.lora.target_modules",
    "lora_target_linear": "method.lora.target_modules",
    "target_modules": "method.lora.target_modules",
    "additional_target": "method.lora.modules_to_save",
    "lora_modules_to_save": "method.lora.modules_to_save",
    "modules_to_save": "method.lora.modules_to_save",
    "init_lora_weights": "method.lora.init",
    "pissa_init": "method.lora.init",
    "loraplus_lr_ratio": "method.lora.loraplus_lr_ratio",
    "freeze_trainable_layers": "method.freeze.trainable_layers",
    "freeze_trainable_modules": "method.freeze.trainable_modules",
    "num_virtual_tokens": "method.prompt.num_virtual_tokens",
    # distributed
    "deepspeed": "distributed.strategy",
    "fsdp": "distributed.strategy",
}

# Values that other tools spell differently (presets/importers.py turns their configs into presets).
OPTIMIZERS_FROM_OTHER_TOOLS: dict[str, str] = {
    "adamw": "adamw", "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw",
    "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit", "paged_adamw_32bit": "paged_adamw_32bit",
    "adafactor": "adafactor", "sgd": "sgd",
}
CHAT_TEMPLATES_FROM_OTHER_TOOLS: dict[str, str] = {
    # LLaMA-Factory's `template` and axolotl's `chat_template` names with a tunebench named template
    "llama3": "llama3", "chatml": "chatml", "qwen": "qwen2", "qwen2": "qwen2", "qwen2_5": "qwen2",
    "mistral": "mistral", "alpaca": "alpaca",
}
ATTENTION_FROM_LLAMA_FACTORY: dict[str, str] = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
# LLaMA-Factory's dataset_info.json `columns` and `tags` names → our data.columns / data.tags keys
LLAMA_FACTORY_COLUMNS: dict[str, str] = {
    "prompt": "instruction", "query": "input", "response": "output", "history": "history",
    "messages": "conversations", "system": "system", "tools": "tools",
}
LLAMA_FACTORY_TAGS: dict[str, str] = {
    "role_tag": "role_key", "content_tag": "content_key", "user_tag": "user", "assistant_tag": "assistant",
    "system_tag": "system", "function_tag": "function_call", "observation_tag": "observation",
}
