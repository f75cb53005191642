"""The typed preset schema: train, eval and merge presets.

Every section forbids unknown keys so a typo is an error, never a silently ignored setting.
Field descriptions are the documentation: the README's schema table is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from presets.methods import LORA_INITS, METHODS, lora_init, method_names, methods_with
from presets.stages import STAGES, stage_names

Dtype = Literal["auto", "bf16", "fp16", "fp32"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _as_list(value):
    if isinstance(value, str):
        return [value]
    return value


# --------------------------------------------------------------------------- model


class QuantizationConfig(Section):
    mode: Literal["none", "8bit", "4bit"] = Field("none", description="bitsandbytes quantization of the base weights")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type")
    double_quant: bool = Field(True, description="quantize the 4-bit quantization constants too (saves ~0.4 bit/param)")
    compute_dtype: Dtype = Field("auto", description="dtype of the 4-bit matmuls; auto = the training precision")


class ModelConfig(Section):
    path: str = Field(..., description="local directory or hub id of the base model")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Dtype = Field("auto", description="dtype the weights are loaded in; auto = bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU")
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig, description="bitsandbytes quantization")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2", "flex_attention"] = Field(
        "auto", description="attention kernel; auto = the fastest one correct for the batch layout here: flash_attention_2 on "
        "Ampere+ GPUs with flash-attn, flex_attention for packed batches on GPUs without it, else sdpa (the run's events say which)"
    )
    trust_remote_code: bool = Field(False, description="run modelling code shipped with the model (only for models you trust)")
    start_from: str | None = Field(
        None, description="start from an earlier result: a run id (its final adapter or model), or an adapter or model "
        "folder; an adapter is trained on, a full model replaces path (how DPO usually follows SFT)"
    )


# --------------------------------------------------------------------------- method

MethodName = Literal[method_names()]  # presets/methods.py is the table of methods


class LoraParams(Section):
    r: int = Field(8, ge=1, description="rank of the update matrices")
    alpha: float = Field(16, gt=0, description="scaling numerator (scale = alpha / r, or alpha / sqrt(r) with rslora)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or all-linear for every linear layer but the output head"
    )
    modules_to_save: list[str] = Field(default_factory=list, description="modules trained in full and saved with the adapter (e.g. embed_tokens, lm_head)")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases are trained")
    init: str = Field(
        "default",
        description="how A and B start: " + ", ".join(LORA_INITS) + " (PiSSA / OLoRA move part of the base into the "
        "adapter; saved adapters are converted back to plain LoRA; LoftQ needs a 4-bit base on a CUDA GPU)",
    )
    loraplus_lr_ratio: float | None = Field(
        None, ge=1, description="LoRA+: the B matrices learn at training.lr x this ratio (the paper uses 16); null = one learning rate"
    )

    @field_validator("target_modules", "modules_to_save", mode="before")
    @classmethod
    def _listify(cls, value):
        return value if value == "all-linear" else _as_list(value)

    @field_validator("init")
    @classmethod
    def _known_init(cls, value):
        try:
            lora_init(value)
        except KeyError:
            raise ValueError(f"expected one of {', '.join(LORA_INITS)}, got {value!r}") from None
        return value


class AdaLoraParams(Section):
    init_r: int = Field(12, ge=1, description="starting rank of every adapted matrix")
    target_r: int = Field(8, ge=1, description="average rank after pruning")
    tinit: int = Field(0, ge=0, description="warm-up steps before rank pruning starts")
    tfinal: int = Field(0, ge=0, description="final steps with the rank budget fixed")
    delta_t: int = Field(1, ge=1, description="steps between two budget allocations")
    beta1: float = Field(0.85, description="EMA coefficient of the sensitivity")
    beta2: float = Field(0.85, description="EMA coefficient of the uncertainty")
    orth_reg_weight: float = Field(0.5, ge=0, description="weight of the orthogonality regulariser")


class FreezeParams(Section):
    trainable_layers: int = Field(2, ge=0, description="train the last N decoder layers (ignored when trainable_modules is set)")
    trainable_modules: list[str] = Field(default_factory=list, description="train only parameters whose name contains one of these")
    train_embeddings: bool = Field(False, description="also train the input embeddings and the output head")

    @field_validator("trainable_modules", mode="before")
    @classmethod
    def _listify(cls, value):
        return _as_list(value)


class IA3Params(Section):
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="modules whose activations are rescaled"
    )
    feedforward_modules: list[str] | None = Field(
        None, description="the subset of target_modules that are feed-forward (scaled on the input); default: the MLP projections"
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _listify(cls, value):
        return value if value == "all-linear" else _as_list(value)


class PromptParams(Section):
    num_virtual_tokens: int = Field(20, ge=1, description="number of learned virtual tokens")
    init_text: str | None = Field(None, description="prompt_tuning: initialise the virtual tokens from this text")
    encoder_hidden_size: int = Field(128, ge=1, description="p_tuning: hidden size of the prompt encoder")
    encoder_type: Literal["MLP", "LSTM"] = Field("MLP", description="p_tuning: prompt encoder architecture")
    prefix_projection: bool = Field(False, description="prefix_tuning: reparameterise the prefix through an MLP")


class MethodConfig(Section):
    name: MethodName = Field("lora", description="how the model is trained")
    lora: LoraParams = Field(default_factory=LoraParams, description=", ".join(methods_with("lora")))
    adalora: AdaLoraParams = Field(default_factory=AdaLoraParams, description="adalora's rank budget schedule")
    freeze: FreezeParams = Field(default_factory=FreezeParams, description=", ".join(methods_with("freeze")))
    ia3: IA3Params = Field(default_factory=IA3Params, description=", ".join(methods_with("ia3")))
    prompt: PromptParams = Field(default_factory=PromptParams, description=", ".join(methods_with("prompt")))


# --------------------------------------------------------------------------- data

# Row formats; engine/data/formats.py holds one table row (detector, normaliser, columns) per name.
DATA_FORMATS = ("alpaca", "sharegpt", "messages", "text")
# Preference layouts beside them (engine/data/preference.py); alpaca and sharegpt also name
# LLaMA-Factory's ranking layouts when the stage is a preference one.
PREFERENCE_FORMATS = ("pairs", "unpaired")


class ColumnMap(Section):
    instruction: str = Field("instruction", description="alpaca: the instruction column")
    input: str = Field("input", description="alpaca: the optional input column, appended to the instruction")
    output: str = Field("output", description="alpaca: the answer column")
    system: str = Field("system", description="alpaca/sharegpt: optional per-row system prompt column")
    history: str = Field("history", description="alpaca: optional [[user, assistant], …] earlier turns")
    conversations: str | None = Field(None, description="sharegpt/messages: the turns column; default conversations or messages")
    tools: str = Field("tools", description="sharegpt: optional tool definitions column")
    text: str = Field("text", description="text: the raw text column")
    prompt: str = Field("prompt", description="pairs/unpaired: the prompt column (text or turns); pairs without it share the prompt turns of chosen and rejected")
    chosen: str = Field("chosen", description="pairs, alpaca and sharegpt preference data: the preferred answer column")
    rejected: str = Field("rejected", description="pairs, alpaca and sharegpt preference data: the dispreferred answer column")
    completion: str = Field("completion", description="unpaired (kto): the judged answer column")
    label: str = Field("label", description="unpaired (kto): the judgement column, true = desirable answer, false = undesirable")


class RoleTags(Section):
    role_key: str | None = Field(None, description="key of a turn's role; default from (sharegpt) or role (messages)")
    content_key: str | None = Field(None, description="key of a turn's text; default value (sharegpt) or content (messages)")
    user: str | None = Field(None, description="role value of user turns; default human (sharegpt) or user (messages)")
    assistant: str | None = Field(None, description="role value of assistant turns; default gpt (sharegpt) or assistant")
    system: str = Field("system", description="role value of system turns")
    function_call: str = Field("function_call", description="role value of tool calls made by the assistant")
    observation: str = Field("observation", description="role value of tool results")


MAX_LENGTH_LIMIT = 1_048_576  # data.max_length above this is refused as a typo


class DataConfig(Section):
    train_files: list[str] = Field(..., min_length=1, description="json, jsonl, csv or parquet files, or a hub dataset id")
    format: Literal[("auto", *DATA_FORMATS, *PREFERENCE_FORMATS)] = Field(
        "auto", description="row format; auto detects it from the first rows. Preference stages: pairs (TRL "
        "prompt/chosen/rejected), unpaired (kto: prompt/completion/label), alpaca or sharegpt (LLaMA-Factory ranking data)"
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="column names, when they differ from the format's")
    tags: RoleTags = Field(default_factory=RoleTags, description="role keys and values of sharegpt/messages turns")
    hub_split: str = Field("train", description="split to read from a hub dataset")
    system_prompt: str | None = Field(None, description="system prompt for rows that have none")
    chat_template: str | None = Field(None, description="None = the tokenizer's; a named template (chatml, llama3, qwen2, mistral, alpaca) or inline Jinja")
    val_ratio: float = Field(0.0, ge=0, lt=1, description="share of rows held out for validation")
    val_files: list[str] = Field(default_factory=list, description="validation files (instead of val_ratio)")
    max_length: int = Field(1024, ge=8, description="tokens per sample; longer samples are truncated")
    packing: bool = Field(False, description="pack several samples per row without cross-attention (position ids restart per sample)")
    packing_strategy: Literal["dataset", "batch"] = Field(
        "dataset", description="with packing: dataset = the whole dataset packed best-fit-decreasing into rows of "
        "max_length before training (fullest rows); batch = the samples of each micro-batch packed together"
    )
    assistant_only_loss: bool = Field(True, description="only assistant turns (and their end-of-turn token) carry labels")
    max_samples: int | None = Field(None, ge=1, description="use at most this many training rows")
    shuffle_seed: int = Field(42, description="seed of the shuffle and of the validation split")
    streaming: bool = Field(
        False, description="read and tokenise the training files while training instead of preparing them ahead "
        "(data too large for the disk cache); needs training.max_steps; the data report comes from a sample"
    )

    @field_validator("train_files", "val_files", mode="before")
    @classmethod
    def _listify(cls, value):
        return _as_list(value)

    @field_validator("max_length")
    @classmethod
    def _plausible_max_length(cls, value):
        # The schema cannot know the model's context length; past 2^20 tokens it is surely a typo.
        if value > MAX_LENGTH_LIMIT:
            raise ValueError(
                f"{value:,} tokens per sample is surely a mistake (the limit here is {MAX_LENGTH_LIMIT:,}): "
                "set it to at most the model's context length (max_position_embeddings in its config.json)"
            )
        return value

    @model_validator(mode="after")
    def _one_validation_source(self):
        if self.val_files and self.val_ratio:
            raise ValueError("set either val_ratio or val_files, not both")
        if self.streaming and self.val_ratio:
            # A share of a stream is unknown until its end: validation comes from its own files.
            raise ValueError("streaming cannot hold out val_ratio of a stream: set val_files to a validation file, or val_ratio: 0")
        return self


# --------------------------------------------------------------------------- training


class TrainingConfig(Section):
    epochs: float = Field(3.0, gt=0, description="passes over the training data (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps to train; overrides epochs")
    batch_size: int = Field(4, ge=1, description="samples per device per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, description="peak learning rate")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = Field(
        "cosine", description="learning-rate schedule after warmup"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of steps spent warming up")
    warmup_steps: int = Field(0, ge=0, description="warmup steps (overrides warmup_ratio when > 0)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm; 0 disables clipping")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"] = Field(
        "adamw", description="optimizer; the 8-bit and paged ones come from bitsandbytes"
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass to save memory")
    kernels: Literal["auto", "liger", "none"] = Field(
        "auto",
        description="loss and layer kernels: liger = Liger Kernel's fused linear cross-entropy (no full logits in memory) "
        "with its RMSNorm / RoPE / SwiGLU kernels, CUDA only, needs pip install 'tunebench[liger]'; "
        "auto = liger on CUDA when installed, else none (transformers' own)",
    )
    compile: bool = Field(False, description="torch.compile the model (slower start, faster steps once compiled)")
    precision: Dtype = Field("auto", description="mixed precision: auto = bf16 where supported, fp16 with loss scaling on older GPUs, fp32 on CPU")
    seed: int = Field(42, description="seed of initialisation, dropout and data order")
    logging_steps: int = Field(10, ge=1, description="steps between two metric reports")
    eval_steps: int | None = Field(None, ge=1, description="steps between evaluations; None = once per epoch when there is a validation set")
    save_steps: int | None = Field(None, ge=1, description="steps between checkpoints; None = once per epoch")
    keep_last: int | None = Field(3, ge=1, description="keep only the last N checkpoints (None keeps all)")
    keep_best: bool = Field(True, description="also keep the checkpoint with the lowest eval loss")
    early_stopping_patience: int | None = Field(None, ge=1, description="stop after this many evaluations without a better eval loss")
    load_best_at_end: bool = Field(False, description="the final result is the best checkpoint by eval loss, not the last")
    neftune_noise_alpha: float | None = Field(
        None, gt=0, description="NEFTune: uniform noise of scale alpha / sqrt(tokens x hidden) on the input embeddings while training (5 is usual); null = off"
    )
    sample_losses_train: int = Field(
        0, ge=0, le=2000, description="per-sample losses (`tunebench samples`) also for this many training samples, "
        "a fixed subset, besides every validation sample; 0 = validation only (each costs a forward pass per evaluation)"
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list,
        description="experiment trackers that also receive the metrics (tunebench's own store always does); "
        "their files go in the run folder; needs pip install 'tunebench[tracking]'",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers_listed(cls, value):
        if value is None or value == "none":
            return []
        return _as_list(value)

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value):
        # Here, not at the first logging step: a run must not queue, load a model and then fail.
        from presets.extras import is_installed, missing_message

        missing = [missing_message(name, f"report_to {name}") for name in dict.fromkeys(value) if not is_installed(name)]
        if missing:
            raise ValueError("; ".join(missing))
        return list(dict.fromkeys(value))

    @field_validator("lr")
    @classmethod
    def _lr_moves_the_weights(cls, value):
        if value == 0:
            raise ValueError("a learning rate of zero trains nothing: the weights never move; use a positive value such as 2e-4")
        if not value > 0:
            raise ValueError(f"a learning rate must be above zero, not {value} (zero trains nothing, a negative one climbs the loss); use e.g. 2e-4")
        return value


StageName = Literal[stage_names()]  # presets/stages.py is the table of stages


class PreferenceConfig(Section):
    beta: float | None = Field(
        None, gt=0, description="strength of the preference term (DPO/KTO: how far from the reference; SimPO: reward "
        "scale; ORPO: weight of the odds ratio); None = the stage's usual value: " + ", ".join(
            f"{name} {stage.default_beta}" for name, stage in STAGES.items() if stage.default_beta is not None)
    )
    loss_type: str | None = Field(
        None, description="dpo: sigmoid (the paper's), ipo, hinge or robust; None = sigmoid"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo/simpo: assumed share of flipped labels (conservative DPO)")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin (gamma / beta ratio as in TRL)")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the good answers' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the bad answers' loss (raise it when they are fewer)")
    ref_model: Literal["auto", "none"] = Field(
        "auto", description="auto = the stage's reference: the base with the adapter switched off (adapters) or a frozen "
        "copy (full, freeze); none = no reference (orpo and simpo need none)"
    )


class ProbesConfig(Section):
    prompts: list[str] = Field(default_factory=list, description="prompts answered greedily at each checkpoint save")
    file: str | None = Field(None, description="a file of probe prompts: one a line (.txt) or a JSON list / JSONL of strings")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="tokens generated per probe answer")

    @field_validator("prompts", mode="before")
    @classmethod
    def _listify(cls, value):
        return _as_list(value) if value is not None else []


class DoctorConfig(Section):
    stop_on_nan: bool = Field(True, description="stop the run when loss or grad_norm is NaN/Inf")
    stop_on_divergence: bool = Field(False, description="stop the run when the doctor reports divergence (preference stages: reward margins shrinking from their best)")


class DistributedConfig(Section):
    strategy: Literal["single", "ddp", "fsdp", "deepspeed"] = Field("single", description="how the job spreads over processes")
    num_processes: int = Field(1, ge=1, description="processes (GPUs) per node")
    fsdp_sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = Field("full_shard", description="fsdp: what is sharded")
    fsdp_wrap: Literal["transformer_layer", "size"] = Field("transformer_layer", description="fsdp: auto-wrap policy")
    zero_stage: Literal[1, 2, 3] = Field(2, description="deepspeed: ZeRO stage")
    offload: bool = Field(False, description="deepspeed/fsdp: offload optimizer state (and ZeRO-3 parameters) to CPU")
    num_nodes: int = Field(1, ge=1, description="machines taking part")
    node_rank: int = Field(0, ge=0, description="this machine's rank among the nodes")
    main_address: str = Field("127.0.0.1", description="address of the rank-0 node")
    main_port: int = Field(29500, ge=1, le=65535, description="port of the rank-0 node")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="torch.distributed backend; auto = nccl on GPU, gloo on CPU")

    @model_validator(mode="after")
    def _consistent_world(self):
        # Combinations that cannot run, whatever the machine; engine.distributed checks the machine.
        if self.strategy == "single" and (self.num_processes > 1 or self.num_nodes > 1):
            raise ValueError(
                "strategy single runs one process: set strategy ddp, fsdp or deepspeed to use "
                f"num_processes {self.num_processes} x num_nodes {self.num_nodes}"
            )
        if self.strategy == "ddp" and self.num_processes * self.num_nodes == 1:
            raise ValueError("strategy ddp with one process in all replicates nothing: set num_processes >= 2, or strategy single")
        if self.node_rank >= self.num_nodes:
            raise ValueError(f"node_rank {self.node_rank} must be below num_nodes {self.num_nodes} (node ranks count from 0)")
        if self.num_nodes > 1 and (self.main_address in ("localhost", "0.0.0.0", "::1") or self.main_address.startswith("127.")):
            raise ValueError(
                f"main_address {self.main_address} only reaches this machine: with num_nodes {self.num_nodes}, "
                "give the rank-0 node's address that the other nodes can reach"
            )
        return self


# --------------------------------------------------------------------------- presets


class TrainPreset(Section):
    kind: Literal["train"] = Field("train", description="preset kind")
    name: str = Field(..., description="preset name")
    description: str = Field("", description="one line shown in preset lists")
    model: ModelConfig = Field(..., description="the base model")
    method: MethodConfig = Field(default_factory=MethodConfig, description="what is trained")
    data: DataConfig = Field(..., description="training and validation data")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="optimisation, evaluation and checkpointing")
    doctor: DoctorConfig = Field(default_factory=DoctorConfig, description="what the training doctor may stop")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig, description="multi-GPU and multi-node launch")
    stage: StageName = Field("sft", description="what is optimised: " + "; ".join(f"{name} = {stage.summary}" for name, stage in STAGES.items()))
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="the preference stages' settings (dpo, orpo, kto, simpo)")
    probes: ProbesConfig = Field(default_factory=ProbesConfig, description="prompts answered at every checkpoint (the probes timeline)")

    @model_validator(mode="after")
    def _stage_fits(self):
        """Preference stages: the methods they train and the settings they take."""
        stage = STAGES[self.stage]
        pref = self.preference
        if not stage.is_preference:
            changed = [key for key, value in pref if value != PreferenceConfig.model_fields[key].get_default(call_default_factory=True)]
            if changed:
                raise ValueError(f"preference.{changed[0]} applies to the preference stages "
                                 f"({', '.join(n for n, s in STAGES.items() if s.is_preference)}): set stage, or drop the preference section")
            return self
        if pref.ref_model == "none" and stage.reference == "needed":
            raise ValueError(f"preference.ref_model none: stage {self.stage}'s loss compares with a reference model; "
                             "use stage orpo or simpo to train without one")
        from presets.extras import is_installed, missing_message

        if not is_installed("trl"):  # here, not after the queue has loaded a model
            raise ValueError(missing_message("trl", f"stage {self.stage}"))
        if METHODS[self.method.name].family == "prompt":
            raise ValueError(
                f"stage {self.stage} trains full, freeze, LoRA-family or QLoRA methods, not {self.method.name}: "
                "prompt-learning adapters add virtual tokens that TRL's preference losses do not place"
            )
        if pref.loss_type is not None and pref.loss_type not in stage.loss_types:
            takes = f"takes {', '.join(stage.loss_types)}" if stage.loss_types else "has one loss and takes no preference.loss_type"
            raise ValueError(f"preference.loss_type {pref.loss_type}: stage {self.stage} {takes}")
        if self.data.packing:
            raise ValueError(f"stage {self.stage} trains on whole pairs: data.packing does not apply (set packing: false)")
        return self

    def beta(self) -> float | None:
        """preference.beta, or the stage's usual value."""
        return self.preference.beta if self.preference.beta is not None else STAGES[self.stage].default_beta

    @model_validator(mode="after")
    def _format_fits_stage(self):
        """data.format names a layout the stage reads (SFT formats for sft, preference layouts otherwise)."""
        fmt, stage = self.data.format, STAGES[self.stage]
        pairs = ", ".join(n for n, s in STAGES.items() if s.data == "pairs")
        unpaired = ", ".join(n for n, s in STAGES.items() if s.data == "unpaired")
        if not stage.is_preference and fmt in PREFERENCE_FORMATS:
            raise ValueError(f"data.format {fmt} is preference data: set stage {pairs if fmt == 'pairs' else unpaired}, "
                             f"or an sft format ({', '.join(DATA_FORMATS)})")
        if stage.is_preference and fmt in ("messages", "text"):
            raise ValueError(f"stage {self.stage} reads preference data, not data.format {fmt}: use auto, pairs, unpaired "
                             "(kto), alpaca or sharegpt (LLaMA-Factory ranking data)")
        if stage.data == "pairs" and fmt == "unpaired":
            raise ValueError(f"stage {self.stage} trains on pairs (chosen and rejected); unpaired data "
                             f"(prompt/completion/label) trains with stage {unpaired}")
        if stage.is_preference and self.data.streaming:
            raise ValueError(f"stage {self.stage} reads its pairs whole, before training: data.streaming does not apply "
                             "(set streaming: false)")
        return self

    @model_validator(mode="after")
    def _method_fits_quantization(self):
        quant, name = self.model.quantization.mode, self.method.name
        method = METHODS[name]
        if method.quantization == "required" and quant == "none":
            # QLoRA means LoRA on a 4-bit base; say so rather than train plain LoRA silently.
            raise ValueError(f"method {name} needs model.quantization.mode: 4bit (or 8bit)")
        if quant != "none" and method.quantization == "never":
            on_quantized = next(n for n, m in METHODS.items() if m.quantization == "required")
            raise ValueError(f"method {name} cannot train quantized weights: set model.quantization.mode: none or use {on_quantized}")
        return self

    @model_validator(mode="after")
    def _lora_options_fit(self):
        """method.lora.init and method.lora.loraplus_lr_ratio: the methods, bases and strategies they work with."""
        lora, name, dist = self.method.lora, self.method.name, self.distributed
        takers = ", ".join(n for n, m in METHODS.items() if m.lora_options)
        if not METHODS[name].lora_options:
            if lora.init != "default":
                raise ValueError(f"method.lora.init {lora.init} does not apply to method {name}: it works with {takers}")
            if lora.loraplus_lr_ratio is not None:
                raise ValueError(f"method.lora.loraplus_lr_ratio does not apply to method {name}: it works with {takers}")
            return self
        init, quant = lora_init(lora.init), self.model.quantization.mode
        if init.base == "unquantized" and quant != "none":
            raise ValueError(f"method.lora.init {lora.init} needs model.quantization.mode: none (not {quant}): {init.base_why}")
        if init.base == "4bit" and quant != "4bit":
            raise ValueError(f"method.lora.init {lora.init} needs model.quantization.mode: 4bit (not {quant}): {init.base_why}")
        if init.moves_base_weights and (lora.modules_to_save or lora.bias != "none" or METHODS[name].memory.magnitude_vectors):
            raise ValueError(
                f"method.lora.init {lora.init} trains the A and B matrices alone: every saved adapter is converted back "
                "to a plain LoRA on the original base, which keeps neither method.lora.modules_to_save, a trained "
                "method.lora.bias nor DoRA's magnitudes (drop them, or use method.lora.init default)"
            )
        if init.dora_why and METHODS[name].memory.magnitude_vectors:
            raise ValueError(f"method.lora.init {lora.init} does not work with method {name}: {init.dora_why}")
        if init.strategies is not None and dist.strategy not in init.strategies:
            raise ValueError(
                f"method.lora.init {lora.init} works under distributed.strategy {' or '.join(init.strategies)}, "
                f"not {dist.strategy}: {init.strategies_why}"
            )
        sharded = "FSDP" if dist.strategy == "fsdp" else "ZeRO-3" if dist.strategy == "deepspeed" and dist.zero_stage == 3 else None
        if init.whole_weights_why and sharded:
            raise ValueError(
                f"method.lora.init {lora.init} does not work under {sharded}, which loads the weights sharded: "
                f"{init.whole_weights_why} (use distributed.strategy ddp, or deepspeed with zero_stage 1 or 2)"
            )
        if lora.loraplus_lr_ratio is not None and dist.strategy == "fsdp":
            raise ValueError(
                "method.lora.loraplus_lr_ratio does not work under FSDP: FSDP flattens each wrapped unit's A and B "
                "matrices into one tensor, which takes one learning rate: use distributed.strategy ddp or deepspeed"
            )
        if lora.loraplus_lr_ratio is not None and dist.strategy == "deepspeed" and dist.offload:
            raise ValueError(
                "method.lora.loraplus_lr_ratio does not work with distributed.offload under DeepSpeed: ZeRO-Offload "
                "steps with DeepSpeed's own CPU Adam, built without LoRA+'s parameter groups: set offload: false, or use ddp"
            )
        return self

    @model_validator(mode="after")
    def _method_fits_distributed(self):
        """Strategy/method/model combinations that fail under FSDP or DeepSpeed, with the reason."""
        dist, method = self.distributed, self.method.name
        fsdp, deepspeed = dist.strategy == "fsdp", dist.strategy == "deepspeed"
        zero3 = deepspeed and dist.zero_stage == 3
        if self.model.quantization.mode == "8bit" and (fsdp or zero3):
            raise ValueError(
                f"8-bit weights cannot be sharded by {'FSDP' if fsdp else 'ZeRO-3'} (bitsandbytes' int8 tensors "
                "are not flattened and split across processes): use model.quantization.mode: 4bit "
                "(QLoRA stores the 4-bit weights in the compute dtype so they shard), or deepspeed zero_stage 1/2, or ddp"
            )
        for limit in METHODS[method].strategy_limits:
            if limit.strategy == dist.strategy and not (limit.unless_fp32 and self.model.dtype == "fp32"):
                raise ValueError(f"method {method} {limit.message}")
        if dist.offload and deepspeed and self.training.optimizer != "adamw":
            raise ValueError(
                f"training.optimizer {self.training.optimizer} cannot step ZeRO-offloaded state: DeepSpeed steps "
                "offloaded optimizer state on the CPU with its own CPU Adam: set training.optimizer: adamw (or offload: false)"
            )
        if dist.offload and self.training.optimizer.startswith("paged"):
            raise ValueError(
                f"training.optimizer {self.training.optimizer} pages optimizer state between GPU and CPU itself; "
                "with distributed.offload the state already lives on the CPU: use adamw (or offload: false)"
            )
        if self.training.load_best_at_end and (fsdp or zero3):
            raise ValueError(
                "training.load_best_at_end cannot load a checkpoint back into a model whose parameters are sharded "
                f"({'FSDP' if fsdp else 'ZeRO-3'}): keep the best checkpoint with training.keep_best and use it by step"
            )
        return self


class EvalPreset(Section):
    kind: Literal["eval"] = Field("eval", description="preset kind")
    name: str = Field(..., description="preset name")
    description: str = Field("", description="one line shown in preset lists")
    run: str | None = Field(None, description="run whose result is evaluated (its base, data and validation split are the defaults)")
    checkpoint: int | None = Field(None, description="step of the run's checkpoint to evaluate; None = the final result")
    model: ModelConfig | None = Field(None, description="base model, when no run is given")
    adapter: str | None = Field(None, description="adapter or fine-tuned model directory, when no run is given")
    data: DataConfig | None = Field(None, description="dataset; default the run's validation split")
    num_samples: int = Field(50, ge=1, description="samples used for generation metrics")
    max_new_tokens: int = Field(64, ge=1, description="generation length for generation metrics")
    batch_size: int = Field(8, ge=1, description="batch size for eval loss")
    compare_base: bool = Field(True, description="also evaluate the base model, side by side")
    stage: StageName | None = Field(None, description="None = the run's stage (sft without a run); sft: eval loss and generated answers; a preference stage: how the models rank the validation pairs (preference accuracy and margin)")

    @model_validator(mode="after")
    def _has_target(self):
        if self.run is None and self.model is None:
            raise ValueError("an eval preset needs run or model")
        return self


class MergeSource(Section):
    path: str = Field(..., description="fine-tuned model directory (or adapter directory)")
    weight: float = Field(1.0, description="weight of this model's task vector")
    density: float = Field(1.0, gt=0, le=1, description="ties/dare: share of the task vector kept")


class MergePreset(Section):
    kind: Literal["merge"] = Field("merge", description="preset kind")
    name: str = Field(..., description="preset name")
    description: str = Field("", description="one line shown in preset lists")
    method: Literal["adapter", "linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "mergekit"] = Field(
        "adapter", description="adapter = fold an adapter into its base; mergekit = run the mergekit configuration in "
        "mergekit:; the others merge several fine-tunes of one base (run by mergekit too)"
    )
    mergekit: dict | None = Field(
        None, description="method mergekit: a mergekit configuration as mergekit reads it (merge_method, models or "
        "slices with layer_range, base_model, parameters, dtype); `tunebench merge FILE` accepts such a file as it is"
    )
    run: str | None = Field(None, description="adapter merge: the run whose adapter is merged")
    checkpoint: int | None = Field(None, description="adapter merge: the checkpoint step; None = the final adapter")
    adapter: str | None = Field(None, description="adapter merge: adapter directory, when no run is given")
    base_model: str | None = Field(None, description="base model (default: the adapter's base)")
    models: list[MergeSource] = Field(default_factory=list, description="models to merge (not for adapter)")
    t: float = Field(0.5, ge=0, le=1, description="slerp: interpolation factor (0 = first model, 1 = second)")
    normalize: bool | None = Field(
        None, description="linear/ties/dare: divide by the sum of weights; null = mergekit's default (true for linear "
        "and ties, false for task_arithmetic and dare)"
    )
    lambda_: float = Field(1.0, alias="lambda", description="task arithmetic/ties/dare: scale of the merged task vector")
    dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="dtype of the saved model")
    tolerance: float = Field(1e-3, gt=0, description="adapter merge: largest allowed logit difference between merged and adapter model")
    seed: int = Field(0, description="dare: seed of the random drop")
    output: str | None = Field(None, description="output directory (default: inside the run folder)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _sources(self):
        if (self.method == "mergekit") != (self.mergekit is not None):
            raise ValueError("mergekit: holds a mergekit configuration and goes with method: mergekit (and only with it)")
        if self.method != "adapter":
            # Here, not when the job starts: a merge must not queue and then fail for a missing package.
            from presets.extras import is_installed, missing_message

            if not is_installed("mergekit"):
                raise ValueError(missing_message("mergekit", f"method {self.method}"))
        if self.method == "mergekit":
            _check_mergekit(self.mergekit)
            return self
        if self.method == "adapter":
            if self.run is None and self.adapter is None:
                raise ValueError("an adapter merge needs run or adapter")
        elif self.method == "slerp":
            if len(self.models) != 2:
                raise ValueError("slerp merges exactly two models")
        elif not self.models:
            raise ValueError(f"method {self.method} needs models")
        if self.method in ("task_arithmetic", "ties", "dare_linear", "dare_ties") and not self.base_model:
            raise ValueError(f"method {self.method} needs base_model (task vectors are differences from it)")
        return self


def _check_mergekit(config: dict):
    # The outline only: mergekit itself (it imports torch) validates the rest when the job starts.
    method = config.get("merge_method")
    if not isinstance(method, str):
        raise ValueError("mergekit.merge_method: required (e.g. linear, slerp, ties, dare_ties, passthrough)")
    if not isinstance(config.get("models"), list) and not isinstance(config.get("slices"), list):
        raise ValueError("mergekit: needs models: (a list of {model: path}) or slices: (each with sources: and layer_range:)")


Preset = Annotated[Union[TrainPreset, EvalPreset, MergePreset], Field(discriminator="kind")]
