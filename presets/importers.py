"""Presets from the configs users already have: LLaMA-Factory and axolotl training YAML, mergekit merges.

`import_config(path)` tells which tool wrote the file, turns every key it can into our key path
(the names come from presets/other_tools.py) and lists each key it could not map with the reason.
A value that our schema refuses (an unknown scheduler, a tracker that is not installed) is dropped
and listed the same way, so the result always validates. Keys left empty (`wandb_project:`) are
unset settings and are passed over in silence.

A mergekit YAML becomes a merge preset (`method: mergekit`) holding the configuration as it is;
mergekit itself validates it when the merge runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from presets.errors import TunebenchError
from presets.loader import NAME_MAX_LENGTH, PresetError, check_name, parse_yaml, read_text, validate_preset
from presets.other_tools import (
    ATTENTION_FROM_LLAMA_FACTORY,
    CHAT_TEMPLATES_FROM_OTHER_TOOLS,
    KEYS_FROM_OTHER_TOOLS,
    LLAMA_FACTORY_COLUMNS,
    LLAMA_FACTORY_TAGS,
    OPTIMIZERS_FROM_OTHER_TOOLS,
)

LLAMA_FACTORY, AXOLOTL, MERGEKIT = "LLaMA-Factory", "axolotl", "mergekit"
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
MERGEKIT_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}

# Keys that configure the other tool itself: nothing in a tunebench preset corresponds to them.
NOT_NEEDED: dict[str, str] = {
    "output_dir": "tunebench writes every run to runs/<run id>/ in the workspace",
    "overwrite_output_dir": "tunebench writes every run to a new folder",
    "overwrite_cache": "prepared datasets are cached by everything that changes them, and rebuilt on demand",
    "dataset_prepared_path": "prepared datasets are cached in the workspace's cache/ folder",
    "preprocessing_num_workers": "tunebench prepares data in one process",
    "plot_loss": "the dashboard plots the loss live",
    "do_train": "a train preset always trains",
    "ddp_timeout": "tunebench sets the distributed timeouts itself",
    "model_type": "tunebench loads every model with AutoModelForCausalLM",
    "tokenizer_type": "tunebench loads every tokenizer with AutoTokenizer",
    "strict": "tunebench always validates every key",
    "resume_from_checkpoint": "resume a run with `tunebench resume RUN [--from STEP]`",
    "local_rank": "set by the launcher, not the config",
    "debug": "tunebench has no debug switch; the engine log has the details",
    "pad_to_sequence_len": "tunebench pads each batch to its longest sample",
    "eval_sample_packing": "evaluation packs as training does (data.packing)",
    "lora_fan_in_fan_out": "peft detects Conv1D layers itself",
    "tf32": "tunebench enables TF32 matmuls where the GPU has them",
}


class ImportProblem(TunebenchError):
    """A config that cannot become a preset at all."""


@dataclass(frozen=True)
class Unmapped:
    key: str  # the key path in the imported file
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


@dataclass
class Imported:
    tool: str
    preset: Any  # TrainPreset | MergePreset
    text: str  # the preset's YAML, as it is saved
    unmapped: list[Unmapped] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)  # their key → our key path


class _Skip(Exception):
    """A key whose value cannot be mapped; the message is the reason."""


def detect_tool(data: dict) -> str | None:
    """Which tool wrote a config, from the keys only that tool uses."""
    if "merge_method" in data:
        return MERGEKIT
    if {"model_name_or_path", "finetuning_type", "cutoff_len", "dataset_dir"} & data.keys() or isinstance(data.get("dataset"), str):
        return LLAMA_FACTORY
    if "base_model" in data and ({"datasets", "micro_batch_size", "sequence_len", "adapter", "num_epochs"} & data.keys()):
        return AXOLOTL
    return None


def default_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "imported"
    return name[:NAME_MAX_LENGTH]


def import_config(path: str | Path, *, name: str | None = None, cwd: str | Path | None = None) -> Imported:
    """The preset a LLaMA-Factory, axolotl or mergekit config stands for (not saved)."""
    path = Path(path).expanduser()
    source = str(path)
    data = parse_yaml(read_text(path), source)
    name = check_name(name or default_name(path))
    tool = detect_tool(data)
    if tool is None:
        raise ImportProblem(
            f"{source}: cannot tell which tool wrote this file",
            "tunebench imports LLaMA-Factory training YAML (model_name_or_path, dataset), axolotl YAML "
            "(base_model, datasets) and mergekit YAML (merge_method); a tunebench preset is used as it is",
        )
    builder = _Builder(source, tool, [path.parent.resolve(), Path(cwd or Path.cwd()).resolve()])
    if tool == MERGEKIT:
        return builder.mergekit(data, name)
    builder.data = {"kind": "train", "name": name, "description": f"imported from {path.name} ({tool})"}
    if tool == LLAMA_FACTORY:
        builder.llama_factory(data)
    else:
        builder.axolotl(data)
    return builder.finish()


# --------------------------------------------------------------------------- the builder


class _Builder:
    def __init__(self, source: str, tool: str, roots: list[Path]):
        self.source, self.tool, self.roots = source, tool, roots
        self.data: dict[str, Any] = {}
        self.unmapped: list[Unmapped] = []
        self.mapped: dict[str, str] = {}
        self.origin: dict[str, str] = {}  # our key path → their key, to report a refused value

    # ----------------------------------------------------------------- helpers

    def put(self, ours: str, value: Any, theirs: str) -> None:
        node = self.data
        *sections, last = ours.split(".")
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
        self.mapped[theirs] = ours
        self.origin[ours] = theirs

    def skip(self, theirs: str, reason: str) -> None:
        self.unmapped.append(Unmapped(theirs, reason))

    def local(self, value: str) -> str:
        """A path that exists beside the config (or in the working directory) made absolute; else as given (a hub id)."""
        candidate = Path(value).expanduser()
        if candidate.is_absolute():
            return str(candidate)
        for root in self.roots:
            if (root / candidate).exists():
                return str((root / candidate).resolve())
        return value

    def keys(self, data: dict, rules: dict[str, Callable[[Any, str], None]]) -> None:
        """Map each set key with its rule, else by name (other_tools.py), else list it."""
        for key, value in data.items():
            if value is None or value == "" or value == []:
                continue
            try:
                if key in rules:
                    rules[key](value, key)
                elif key in NOT_NEEDED:
                    self.skip(key, f"not needed: {NOT_NEEDED[key]}")
                elif key in KEYS_FROM_OTHER_TOOLS and not isinstance(value, (dict, list)):
                    self.put(KEYS_FROM_OTHER_TOOLS[key], value, key)
                else:
                    self.skip(key, "tunebench has no such setting")
            except _Skip as why:
                self.skip(key, str(why))

    # ----------------------------------------------------------------- rules shared by both tools

    def _scheduler(self, value, key):
        if value not in SCHEDULERS:
            raise _Skip(f"{value!r} is not a tunebench schedule ({', '.join(SCHEDULERS)}); the preset keeps cosine")
        self.put("training.scheduler", value, key)

    def _optimizer(self, value, key):
        ours = OPTIMIZERS_FROM_OTHER_TOOLS.get(str(value))
        if ours is None:
            raise _Skip(f"{value!r} has no tunebench counterpart ({', '.join(sorted(set(OPTIMIZERS_FROM_OTHER_TOOLS.values())))}); the preset keeps adamw")
        self.put("training.optimizer", ours, key)

    def _precision(self, value, key):
        name = "bf16" if key == "bf16" else "fp16"
        if value == "auto":
            self.put("training.precision", "auto", key)
        elif value is True:
            self.put("training.precision", name, key)
        elif value is not False:
            raise _Skip(f"expected true, false or auto, got {value!r}")

    def _template(self, value, key):
        ours = CHAT_TEMPLATES_FROM_OTHER_TOOLS.get(str(value))
        if ours is None:
            raise _Skip(f"no tunebench named template is {value!r}: the tokenizer's own chat template is used "
                        "(set data.chat_template to chatml, llama3, qwen2, mistral, alpaca or inline Jinja to change it)")
        self.put("data.chat_template", ours, key)

    def _not_assistant_only(self, value, key):
        self.put("data.assistant_only_loss", not bool(value), key)

    def _val_ratio(self, value, key):
        if isinstance(value, (int, float)) and 0 <= value < 1:
            self.put("data.val_ratio", float(value), key)
        else:
            raise _Skip(f"{value!r} rows: tunebench holds out a share (data.val_ratio below 1) or takes data.val_files")

    def _quantize(self, bits: int, key: str) -> None:
        if bits not in (4, 8):
            raise _Skip(f"{bits}-bit: tunebench quantizes with bitsandbytes in 4 or 8 bits")
        self.put("model.quantization.mode", f"{bits}bit", key)

    def _gradient_checkpointing(self, value, key):
        self.put("training.gradient_checkpointing", bool(value), key)

    def _tracker(self, value, key):
        names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        names = [n for n in names if n not in ("none", "")]
        if names:
            self.put("training.report_to", names, key)

    def _distributed(self, value, key):
        raise _Skip(f"set distributed.strategy ({'deepspeed and zero_stage' if key == 'deepspeed' else 'fsdp'}) "
                    "in the preset; tunebench writes the launcher's config itself")

    def _model_path(self, value, key):
        self.put("model.path", self.local(str(value)), key)

    def shared_rules(self) -> dict[str, Callable[[Any, str], None]]:
        return {
            "model_name_or_path": self._model_path, "base_model": self._model_path,
            "lr_scheduler_type": self._scheduler, "lr_scheduler": self._scheduler,
            "optim": self._optimizer, "optimizer": self._optimizer,
            "bf16": self._precision, "fp16": self._precision,
            "template": self._template, "chat_template": self._template,
            "gradient_checkpointing": self._gradient_checkpointing,
            "report_to": self._tracker,
            "deepspeed": self._distributed, "fsdp": self._distributed, "fsdp_config": self._distributed,
        }

    # ----------------------------------------------------------------- LLaMA-Factory

    def llama_factory(self, data: dict) -> None:
        stage = data.get("stage", "sft")
        if stage not in ("sft", "pt"):
            raise ImportProblem(f"{self.source}: stage {stage}: tunebench trains supervised fine-tuning (sft) and "
                                "plain-text continued pre-training (pt) only", "import an sft config")
        finetuning = data.get("finetuning_type", "lora")
        quant_bits = data.get("quantization_bit")
        method = {"lora": "lora", "full": "full", "freeze": "freeze"}.get(finetuning)
        if method == "lora" and data.get("use_dora"):
            method = "dora"
        elif method == "lora" and data.get("use_rslora"):
            method = "rslora"
        if method in ("lora",) and quant_bits in (4, 8):
            method = "qlora"
        lora_rank = data.get("lora_rank", 8)

        def finetuning_type(value, key):
            if method is None:
                raise _Skip(f"{value!r} has no tunebench counterpart (lora, full or freeze); the preset trains lora")
            self.put("method.name", method, key)

        def flag(value, key):
            if value and method not in ("dora", "rslora"):
                raise _Skip("applies to finetuning_type lora")
            self.mapped[key] = "method.name"

        def lora_target(value, key):
            targets = [t.strip() for t in str(value).split(",") if t.strip()] if isinstance(value, str) else list(value)
            self.put("method.lora.target_modules", "all-linear" if targets == ["all"] else targets, key)

        def additional_target(value, key):
            self.put("method.lora.modules_to_save", [t.strip() for t in str(value).split(",") if t.strip()], key)

        def attention(value, key):
            ours = ATTENTION_FROM_LLAMA_FACTORY.get(str(value))
            if ours is None:
                raise _Skip(f"{value!r}: expected one of {', '.join(ATTENTION_FROM_LLAMA_FACTORY)}")
            self.put("model.attn_implementation", ours, key)

        def quantization_bit(value, key):
            self._quantize(int(value), key)

        def stage_key(value, key):
            self.mapped[key] = "data.format"  # sft: the dataset's format; pt: text

        def freeze_modules(value, key):
            modules = [m.strip() for m in str(value).split(",") if m.strip()]
            if modules == ["all"]:
                raise _Skip("'all' is LLaMA-Factory's default; tunebench's freeze method trains the last layers (method.freeze.trainable_layers)")
            self.put("method.freeze.trainable_modules", modules, key)

        rules = {
            **self.shared_rules(),
            "stage": stage_key, "finetuning_type": finetuning_type, "use_dora": flag, "use_rslora": flag,
            "lora_target": lora_target, "additional_target": additional_target, "flash_attn": attention,
            "quantization_bit": quantization_bit, "freeze_trainable_modules": freeze_modules,
            "train_on_prompt": self._not_assistant_only, "val_size": self._val_ratio,
            "dataset": lambda value, key: self._llama_factory_datasets(value, key, data, stage),
            "dataset_dir": lambda value, key: None,  # read with dataset
            "quantization_method": lambda value, key: None if value == "bitsandbytes" else self._raise(
                f"{value}: tunebench quantizes with bitsandbytes"),
        }
        self.keys(data, rules)
        if "lora_alpha" not in data and method in ("lora", "qlora", "dora", "rslora"):
            self.put("method.lora.alpha", lora_rank * 2, "lora_alpha")  # LLaMA-Factory's default: twice the rank
            self.mapped.pop("lora_alpha")

    @staticmethod
    def _raise(reason: str):
        raise _Skip(reason)

    def _dataset_info(self, data: dict) -> tuple[Path, dict]:
        folder = data.get("dataset_dir") or "data"
        tried = []
        for root in self.roots + [r.parent for r in self.roots] + [r.parent.parent for r in self.roots]:
            candidate = (root / folder).resolve() if not Path(folder).is_absolute() else Path(folder)
            tried.append(str(candidate))
            info_file = candidate / "dataset_info.json"
            if info_file.is_file():
                try:
                    return candidate, json.loads(info_file.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise ImportProblem(f"{info_file}: not valid JSON (line {exc.lineno})", "fix the file") from None
        raise ImportProblem(
            f"{self.source}: dataset names its data by dataset_info.json entries, and no dataset_info.json was found "
            f"(looked in {', '.join(dict.fromkeys(tried))})",
            "set dataset_dir: to the folder holding dataset_info.json, or run the import from LLaMA-Factory's folder",
        )

    def _llama_factory_datasets(self, value, key: str, data: dict, stage: str) -> None:
        names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
        folder, info = self._dataset_info(data)
        files, first = [], None
        for name in names:
            where = f"{key}: {name}"
            entry = info.get(name)
            if entry is None:
                self.skip(where, f"not in {folder / 'dataset_info.json'}")
                continue
            if entry.get("ranking"):
                self.skip(where, "a preference (ranking) dataset: tunebench trains supervised fine-tuning only")
                continue
            if entry.get("hf_hub_url"):
                location = entry["hf_hub_url"]
            elif entry.get("file_name"):
                location = str((folder / entry["file_name"]).resolve())
            else:
                self.skip(where, "neither file_name nor hf_hub_url (ms_hub_url and script_url are not supported)")
                continue
            formatting = "text" if stage == "pt" else entry.get("formatting", "alpaca")
            shape = (formatting, json.dumps(entry.get("columns", {}), sort_keys=True), json.dumps(entry.get("tags", {}), sort_keys=True))
            if first is None:
                first = (name, shape, entry)
            elif shape != first[1]:
                self.skip(where, f"its format or columns differ from {first[0]}'s, and a preset has one format: import it in a preset of its own")
                continue
            files.append(location)
        if not files:
            return
        self.put("data.train_files", files, key)
        name, (formatting, _, _), entry = first
        if formatting not in ("alpaca", "sharegpt", "text"):
            self.skip(f"{key}: {name}.formatting", f"{formatting!r}: LLaMA-Factory formats are alpaca and sharegpt")
            return
        self.put("data.format", formatting, f"{key}: {name}.formatting")
        columns = entry.get("columns") or {}
        for theirs, column in columns.items():
            where = f"{key}: {name}.columns.{theirs}"
            if stage == "pt":
                if theirs == "prompt":
                    self.put("data.columns.text", column, where)
                continue
            ours = LLAMA_FACTORY_COLUMNS.get(theirs)
            if ours is None:
                self.skip(where, "tunebench trains on text conversations (no images, videos, audio, preference or kto columns)")
            else:
                self.put(f"data.columns.{ours}", column, where)
        for theirs, tag in (entry.get("tags") or {}).items():
            where = f"{key}: {name}.tags.{theirs}"
            ours = LLAMA_FACTORY_TAGS.get(theirs)
            if ours is None:
                self.skip(where, "tunebench has no such role tag")
            else:
                self.put(f"data.tags.{ours}", tag, where)

    # ----------------------------------------------------------------- axolotl

    def axolotl(self, data: dict) -> None:
        adapter = data.get("adapter")
        methods = {"lora": "lora", "qlora": "qlora", None: "full", "": "full"}
        if data.get("peft_use_dora") and adapter == "lora":
            methods["lora"] = "dora"
        if data.get("peft_use_rslora") and adapter == "lora":
            methods["lora"] = "rslora"
        if adapter == "lora" and (data.get("load_in_4bit") or data.get("load_in_8bit")):
            methods["lora"] = "qlora"  # LoRA on a quantized base is what tunebench calls qlora
        if adapter not in methods:
            self.skip("adapter", f"{adapter!r} has no tunebench counterpart (lora, qlora, or none for a full fine-tune); the preset trains lora")
        else:
            self.put("method.name", methods[adapter], "adapter")

        def lora_targets(value, key):
            if isinstance(value, str):  # a regular expression in axolotl
                raise _Skip("a pattern: tunebench takes a list of module names (method.lora.target_modules)")
            self.put("method.lora.target_modules", list(value), key)

        def target_linear(value, key):
            if value:
                self.put("method.lora.target_modules", "all-linear", key)

        def load_in(bits):
            def rule(value, key):
                if value:
                    self._quantize(bits, key)
            return rule

        def flash(value, key):
            if value:
                self.put("model.attn_implementation", "flash_attention_2", key)

        def flags(value, key):
            if value:
                self.mapped[key] = "method.name"

        def wandb(value, key):
            raise _Skip("set training.report_to: [wandb] and the WANDB_* environment variables (project, entity)")

        rules = {
            **self.shared_rules(),
            "adapter": lambda value, key: None, "peft_use_dora": flags, "peft_use_rslora": flags,
            "lora_target_modules": lora_targets, "lora_target_linear": target_linear,
            "load_in_4bit": load_in(4), "load_in_8bit": load_in(8), "flash_attention": flash,
            "train_on_inputs": self._not_assistant_only, "val_set_size": self._val_ratio,
            "datasets": self._axolotl_datasets,
            "special_tokens": lambda value, key: self._raise("tunebench keeps the tokenizer's special tokens (pad falls back to eos)"),
            **{k: wandb for k in data if k.startswith("wandb_")},
        }
        self.keys(data, rules)

    def _axolotl_datasets(self, value, key: str) -> None:
        if not isinstance(value, list):
            raise _Skip("expected a list of datasets")
        files, first = [], None
        for number, entry in enumerate(value):
            where = f"{key}[{number}]"
            if not isinstance(entry, dict) or not entry.get("path"):
                self.skip(where, "a dataset needs path:")
                continue
            shape = self._axolotl_format(entry, where)
            if shape is None:
                continue
            if first is None:
                first = (where, shape, entry)
            elif shape != first[1]:
                self.skip(where, f"its type or fields differ from {first[0]}'s, and a preset has one format: import it in a preset of its own")
                continue
            location = entry["path"]
            if entry.get("data_files"):
                data_files = entry["data_files"]
                data_files = [data_files] if isinstance(data_files, str) else list(data_files)
                location = [self.local(f) for f in data_files]
            files += location if isinstance(location, list) else [self.local(location)]
            for extra in sorted(set(entry) - {"path", "type", "data_files", "ds_type", "split", "field_messages",
                                              "message_property_mappings", "message_field_role", "message_field_content",
                                              "roles", "field", "conversation"}):
                self.skip(f"{where}.{extra}", "tunebench has no such dataset setting")
            if entry.get("split") and entry["split"] != "train":
                self.put("data.hub_split", entry["split"], f"{where}.split")
        if not files:
            return
        self.put("data.train_files", files, key)
        where, (fmt, settings), _ = first
        self.put("data.format", fmt, f"{where}.type")
        for ours, setting in settings:
            self.put(ours, setting, f"{where}.{ours.rsplit('.', 1)[-1]}")

    def _axolotl_format(self, entry: dict, where: str) -> tuple[str, tuple] | None:
        """(our format, ((our key, value), …)) of an axolotl dataset, or None after listing why not."""
        kind = entry.get("type")
        if isinstance(kind, dict):  # a custom prompt format: its fields map to alpaca's columns
            fields = {"field_instruction": "instruction", "field_input": "input", "field_output": "output", "field_system": "system"}
            for extra in sorted(set(kind) - set(fields)):
                self.skip(f"{where}.type.{extra}", "tunebench formats the prompt with the chat template, not a format string")
            return "alpaca", tuple((f"data.columns.{ours}", kind[theirs]) for theirs, ours in fields.items() if kind.get(theirs))
        kind = str(kind or "")
        if kind.startswith("alpaca"):
            return "alpaca", ()
        if kind == "completion":
            return "text", ((("data.columns.text", entry["field"]),) if entry.get("field") else ())
        if kind == "sharegpt" or kind.startswith("sharegpt."):
            return "sharegpt", ()
        if kind == "chat_template" or kind.startswith("chat_template."):
            settings = [("data.columns.conversations", entry.get("field_messages", "messages"))]
            mappings = entry.get("message_property_mappings") or {}
            role = mappings.get("role", entry.get("message_field_role"))
            content = mappings.get("content", entry.get("message_field_content"))
            if role:
                settings.append(("data.tags.role_key", role))
            if content:
                settings.append(("data.tags.content_key", content))
            for ours, theirs in (("user", "user"), ("assistant", "assistant")):
                values = (entry.get("roles") or {}).get(theirs)
                if values:
                    settings.append((f"data.tags.{ours}", values[0] if isinstance(values, list) else values))
            return "messages", tuple(settings)
        self.skip(f"{where}.type", f"{kind or 'no type'}: tunebench reads alpaca, chat_template (messages), sharegpt "
                                   "and completion (text) datasets; the dataset was left out")
        return None

    # ----------------------------------------------------------------- mergekit

    def mergekit(self, data: dict, name: str) -> Imported:
        config = json.loads(json.dumps(data))  # a plain copy
        for model in self._mergekit_models(config):
            model["model"] = "+".join(self.local(part) for part in str(model["model"]).split("+"))
        if isinstance(config.get("base_model"), str):
            config["base_model"] = "+".join(self.local(part) for part in config["base_model"].split("+"))
        preset = {"kind": "merge", "name": name, "description": f"imported from {Path(self.source).name} (mergekit)",
                  "method": "mergekit", "mergekit": config}
        dtype = config.get("out_dtype") or config.get("dtype")
        if dtype is not None:
            if dtype not in MERGEKIT_DTYPES:
                raise ImportProblem(f"{self.source}: dtype {dtype!r}: expected bfloat16, float16 or float32", "fix the dtype")
            preset["dtype"] = MERGEKIT_DTYPES[dtype]
        else:
            self.skip("dtype", "not set: the merged model is saved in bf16 (change it with dtype: or --dtype)")
        self.data, self.mapped = preset, {k: f"mergekit.{k}" for k in data}
        return self.finish()

    @staticmethod
    def _mergekit_models(config: dict) -> list[dict]:
        models = [m for m in config.get("models") or [] if isinstance(m, dict) and "model" in m]
        for piece in config.get("slices") or []:
            if isinstance(piece, dict):
                models += [s for s in piece.get("sources") or [] if isinstance(s, dict) and "model" in s]
        return models

    # ----------------------------------------------------------------- validation

    def finish(self) -> Imported:
        """Validate; a value our schema refuses is dropped and listed with the schema's reason."""
        for _ in range(50):  # each round drops at least one key
            text = yaml.safe_dump(self.data, sort_keys=False, allow_unicode=True)
            try:
                preset = validate_preset(json.loads(json.dumps(self.data)), self.source, None)
            except PresetError as error:
                if not self._drop_refused(error):
                    raise ImportProblem(
                        f"{self.source} ({self.tool}) does not make a valid preset: "
                        + "; ".join(str(p) for p in error.problems),
                        "add the missing settings to the file (or edit the preset after importing)",
                    ) from None
                continue
            header = f"# imported from {self.source} ({self.tool}) by `tunebench presets import`\n"
            return Imported(self.tool, preset, header + text, self.unmapped, self.mapped)
        raise ImportProblem(f"{self.source}: the import does not settle", "report this as a bug")

    def _drop_refused(self, error: PresetError) -> bool:
        dropped = False
        for problem in error.problems:
            path = problem.path
            ours = next((p for p in sorted(self.origin, key=len, reverse=True) if path == p or path.startswith(p + ".")), None)
            if ours is None:
                continue
            node = self.data
            *sections, last = ours.split(".")
            for part in sections:
                node = node.get(part, {})
            if last in node:
                del node[last]
                theirs = self.origin.pop(ours)
                self.mapped.pop(theirs, None)
                self.skip(theirs, f"tunebench refuses the value ({ours}: {problem.message})")
                dropped = True
        return dropped
