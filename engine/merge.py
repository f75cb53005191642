"""Merging: fold an adapter into its base, or merge several fine-tunes of one base.

Adapter merge (`method: adapter`): the base is loaded in fp32 — never in 4-bit, even for a QLoRA
adapter — the adapter is applied and `merge_and_unload`ed, and the merged model's logits are
compared with the adapter model's on a few probe inputs. Past `preset.tolerance` the merge fails
with an EngineError; otherwise the model is saved as safetensors, with its tokenizer, in
`preset.dtype`, reloaded with plain transformers and checked once more.

Multi-model merges are mergekit's (arcee-ai/mergekit, used as a library): a `method: mergekit`
preset runs its mergekit configuration as it is — any merge_method, `models` or `slices` with
`layer_range` (passthrough "frankenmerges"), per-filter and per-layer gradients, dtype — and the
methods of our own preset form (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties) are
turned into the mergekit configuration of the same merge (`mergekit_config`). One implementation
of the merge math, so a merge equals mergekit's tensor for tensor; what tunebench adds around it:
adapter sources folded into their base first, a shape check naming the tensor, progress and
cancel between tensors, the all-or-nothing output folder and merge_report.json.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from engine.artifacts import human_bytes
from engine.errors import EngineError
from engine.models import quiet_libraries
from engine.outcome import JobOutcome, JobStopped
from engine.sink import Sink

SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SAFETENSORS = "model.safetensors"
REPORT_FILE = "merge_report.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3
MERGEKIT_CONFIG_FILE = "mergekit_config.yml"
MERGEKIT_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_PROMPT_LEARNING = {"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"}
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
SPARSIFYING_METHODS = ("ties", "dare_linear", "dare_ties")


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


# --------------------------------------------------------------------------- entry point


def run_merge(preset, out_dir: str | Path, sink: Sink | None = None) -> JobOutcome:
    """Run a resolved MergePreset; the merged model lands in `out_dir`. The outcome's details are the summary."""
    sink = sink or Sink()
    out_dir = Path(out_dir)
    quiet_libraries()
    if preset.method == "adapter":
        if not preset.adapter:
            raise EngineError("the adapter merge has no adapter directory", "set adapter: (or run:, resolved by the jobs layer)")
        return JobOutcome("completed", details=merge_adapter(
            preset.adapter, out_dir, base_model=preset.base_model, dtype=preset.dtype,
            tolerance=preset.tolerance, sink=sink,
        ))
    try:
        return JobOutcome("completed", details=merge_models(preset, out_dir, sink))
    except JobStopped as stop:
        return JobOutcome.stopped(stop.reason, method=preset.method, output=None)


# --------------------------------------------------------------------------- output folder


@contextlib.contextmanager
def _staging(out_dir: Path):
    """Build the result next to `out_dir` and move it in only when complete.

    A crash or failure leaves at most a `.partial` folder (removed by the next attempt), never a
    half-written model where a finished one is expected.
    """
    if (out_dir / "config.json").exists() or any(out_dir.glob("*.safetensors")):
        raise EngineError(f"{out_dir} holds a model already", "choose another output directory, or delete that one first")
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    report = staging / REPORT_FILE
    for child in staging.iterdir():
        if child != report:
            os.replace(child, out_dir / child.name)
    if report.exists():  # last: its presence says the folder is complete
        os.replace(report, out_dir / REPORT_FILE)
    staging.rmdir()


def _write_report(staging: Path, summary: dict) -> None:
    (staging / REPORT_FILE).write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- adapter → full model


def probe_texts(tokenizer) -> list[str]:
    """A few short inputs covering plain text and, when there is one, the chat template."""
    texts = ["Hello! How can I help you today?", "The capital of France is", "1, 2, 3, 4, 5, 6, 7"]
    if getattr(tokenizer, "chat_template", None):
        try:
            texts.append(tokenizer.apply_chat_template(
                [{"role": "user", "content": "What is the capital of Italy?"}], tokenize=False, add_generation_prompt=True,
            ))
        except Exception:  # a template that needs other roles: the plain probes still check the merge
            pass
    return texts


def probe_logits(model, tokenizer, texts: list[str]) -> list:
    """fp32 logits for each probe text, one at a time (no padding to get wrong)."""
    import torch

    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=True)["input_ids"].to(device)
            outputs.append(model(input_ids=ids).logits.float().cpu())
    return outputs


def max_abs_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _load_adapter_config(adapter_dir: Path) -> dict:
    config_file = adapter_dir / "adapter_config.json"
    if not config_file.is_file():
        if (adapter_dir / "config.json").is_file():
            raise EngineError(
                f"{adapter_dir} is a full model, not an adapter: there is nothing to merge",
                "use it as it is (chat, eval), or `tunebench export` to copy it",
            )
        raise EngineError(f"{adapter_dir} has no adapter_config.json", "point adapter: at a PEFT adapter folder (a run's final/ or a checkpoint)")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EngineError(f"{config_file}: not valid JSON (line {exc.lineno})", "the adapter folder is damaged; use another checkpoint") from None


def _tokenizer_source(adapter_dir: Path, base: str) -> str:
    # The trainer saves the tokenizer next to the adapter; it wins over the base's (added tokens, template).
    return str(adapter_dir) if (adapter_dir / "tokenizer_config.json").is_file() else base


def _run_preset_for(adapter_dir: Path):
    """The frozen train preset of the run an adapter belongs to (final/ or checkpoints/checkpoint-N/), if any."""
    from engine.artifacts import PRESET_FILE

    for run_dir in (adapter_dir.parent, adapter_dir.parent.parent):
        if (run_dir / PRESET_FILE).is_file():
            try:
                from engine.artifacts import RunArtifacts

                preset = RunArtifacts(run_dir).load_preset()
            except Exception:
                return None
            return preset if preset.kind == "train" else None
    return None


def _load_causal_lm(path: str, dtype, **kwargs):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, low_cpu_mem_usage=True, **kwargs)
    except OSError as exc:
        raise EngineError(f"cannot load the model {path}: {exc}", "check the path (or hub id) and that its weights are there") from None


def merge_adapter(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base_model: str | None = None,
    dtype: str = "bf16",
    tolerance: float = 1e-3,
    sink: Sink | None = None,
    check_quantized: bool = True,
) -> dict[str, Any]:
    """Fold a LoRA / DoRA / IA3 / AdaLoRA (or QLoRA) adapter into its fp32 base and save it."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    sink = sink or Sink()
    started = time.time()
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    adapter_config = _load_adapter_config(adapter_dir)
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    if peft_type == "LORA" and adapter_config.get("use_dora"):
        peft_type = "DORA"
    if peft_type in _PROMPT_LEARNING:
        raise EngineError(
            f"{adapter_dir} is a {peft_type.lower()} adapter: learned virtual tokens cannot be folded into weights",
            "keep it as an adapter (chat and eval load it on the base), or train with lora/dora/ia3 to get a mergeable one",
        )
    base = base_model or adapter_config.get("base_model_name_or_path")
    if not base:
        raise EngineError(f"{adapter_dir}: the adapter does not name its base model", "set base_model: in the merge preset")
    run_preset = _run_preset_for(adapter_dir)
    quantized_run = bool(run_preset and run_preset.model.quantization.mode != "none")

    sink.event("info", f"merging {peft_type or 'adapter'} {adapter_dir} into {base} (base loaded in fp32"
               + (", not in the 4-bit weights it was trained on)" if quantized_run else ")"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_source(adapter_dir, base))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot load a tokenizer from {_tokenizer_source(adapter_dir, base)}: {exc}",
                          "save the tokenizer with the adapter, or set base_model: to a local model folder") from None
    model = _load_causal_lm(base, torch.float32)
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:  # the run added tokens: the adapter's saved embeddings expect the larger table
        model.resize_token_embeddings(len(tokenizer))
    try:
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except Exception as exc:
        raise EngineError(
            f"cannot load the adapter {adapter_dir} onto {base}: {exc}",
            "merge onto the base the adapter was trained on (base_model:)",
        ) from None
    model.eval()
    texts = probe_texts(tokenizer)
    adapter_logits = probe_logits(model, tokenizer, texts)
    merged = model.merge_and_unload()
    merged_logits = probe_logits(merged, tokenizer, texts)
    diff = max_abs_diff(adapter_logits, merged_logits)
    sink.metrics(0, {"merge_max_abs_diff": diff})
    if not diff <= tolerance:  # also catches NaN
        raise EngineError(
            f"the merged model's logits differ from the adapter model's by {diff:.3g} (tolerance {tolerance:g})",
            "the adapter may hold NaN/Inf or not fit this base; check the base model, or raise tolerance: if the difference is expected",
        )
    sink.event("info", f"merged logits match the adapter model's: max |Δ| = {diff:.3g} over {len(texts)} probes")

    summary: dict[str, Any] = {
        "status": "completed", "method": "adapter", "peft_type": peft_type, "adapter": str(adapter_dir),
        "base_model": base, "dtype": dtype, "tolerance": tolerance, "probes": len(texts),
        "max_abs_diff": diff, "quantized_run": quantized_run, "output": str(out_dir),
    }
    with _staging(out_dir) as staging:
        merged = merged.to(torch_dtype(dtype))
        merged.config.dtype = torch_dtype(dtype)
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        del merged, model
        # The proof that it stands alone: plain transformers, no peft, in the saved dtype.
        reloaded = _load_causal_lm(str(staging), "auto")
        saved_logits = probe_logits(reloaded, tokenizer, texts)
        summary["saved_max_abs_diff"] = max_abs_diff(adapter_logits, saved_logits)
        summary["saved_dtype"] = str(reloaded.dtype).removeprefix("torch.")
        del reloaded
        if dtype == "fp32" and not summary["saved_max_abs_diff"] <= tolerance:
            raise EngineError(
                f"the saved model's logits differ from the adapter model's by {summary['saved_max_abs_diff']:.3g}",
                "the saved files do not reload as merged; check free disk space and retry",
            )
        if quantized_run and check_quantized:
            summary["quantized_max_abs_diff"] = _quantized_adapter_diff(adapter_dir, base, run_preset, tokenizer, texts, adapter_logits, sink)
        summary["size_bytes"] = _dir_size(staging)
        summary["seconds"] = round(time.time() - started, 2)
        _write_report(staging, summary)
    sink.event("info", f"saved the merged model ({dtype}, {human_bytes(summary['size_bytes'])}) to {out_dir}")
    return summary


def _quantized_adapter_diff(adapter_dir, base, run_preset, tokenizer, texts, reference, sink) -> float | None:
    """How far the fp32 merge lies from the adapter on the quantized base it was trained on (information only)."""
    import torch

    try:
        from peft import PeftModel
        from transformers import BitsAndBytesConfig

        quant = run_preset.model.quantization
        if quant.mode == "4bit":
            config = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                bnb_4bit_use_double_quant=quant.double_quant, bnb_4bit_compute_dtype=torch.float32,
            )
        else:
            config = BitsAndBytesConfig(load_in_8bit=True)
        device_map = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
        model = _load_causal_lm(base, torch.float32, quantization_config=config, device_map=device_map)
        avoid_cpu_4bit_packing(model)
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
        diff = max_abs_diff(reference, probe_logits(model, tokenizer, texts))
        del model
    except Exception as exc:  # bitsandbytes missing or unsupported here: the merge itself is fine
        sink.event("warning", f"could not measure the difference to the {run_preset.model.quantization.mode} adapter model: {exc}")
        return None
    sink.event("info", f"the fp32 merge differs from the {run_preset.model.quantization.mode} adapter model by max |Δ| = {diff:.3g} "
               "(quantization error of the base the adapter was trained on)")
    return diff


def avoid_cpu_4bit_packing(model) -> None:
    """bitsandbytes repacks 4-bit weights for AVX512-bf16 CPU inference and fails when an input
    dimension is not a multiple of its block size (the tiny model's 352); the plain path works."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


# --------------------------------------------------------------------------- multi-model merges (mergekit)


class SafetensorsModel:
    """A model folder's tensor names and shapes, read from the safetensors headers only."""

    def __init__(self, path: str | Path, stack: contextlib.ExitStack):
        from safetensors import safe_open

        self.path = Path(path)
        index = self.path / SAFETENSORS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        elif (self.path / SINGLE_SAFETENSORS).is_file():
            weight_map = None
        else:
            raise EngineError(
                f"{self.path} has no safetensors weights (model.safetensors or {SAFETENSORS_INDEX})",
                "merges read safetensors only: re-save the model with save_pretrained(safe_serialization=True)",
            )
        handles = {}
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_SAFETENSORS]
        for name in files:
            handles[name] = stack.enter_context(safe_open(str(self.path / name), framework="pt", device="cpu"))
        self._handles = handles
        if weight_map is None:
            weight_map = {key: SINGLE_SAFETENSORS for key in handles[SINGLE_SAFETENSORS].keys()}
        self.weight_map: dict[str, str] = weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.weight_map[name]].get_slice(name).get_shape())


def _source_dirs(preset, staging: Path, sink: Sink) -> list[Path]:
    """Model folders of the sources; adapter sources are first merged into full models."""
    dirs = []
    for number, source in enumerate(preset.models):
        path = Path(source.path)
        if not path.is_dir():
            raise EngineError(f"models[{number}].path: {path} is not a directory", "merges read local model folders; download hub models first")
        if (path / "adapter_config.json").is_file():
            full = staging / "_sources" / f"model-{number}"
            sink.event("info", f"models[{number}] is an adapter: merging it into its base first")
            merge_adapter(path, full, base_model=None, dtype="fp32", tolerance=preset.tolerance, sink=sink, check_quantized=False)
            path = full
        dirs.append(path)
    return dirs


def _check_same_tensors(reference_dir: Path, source_dirs: list[Path]) -> None:
    """Refuse models of another architecture or vocabulary before mergekit starts, naming a tensor."""
    with contextlib.ExitStack() as stack:
        reference = SafetensorsModel(reference_dir, stack)
        for number, path in enumerate(source_dirs):
            source = SafetensorsModel(path, stack)
            missing = [n for n in reference.names() if n not in source.weight_map]
            if missing:
                raise EngineError(
                    f"models[{number}] ({path}) lacks {len(missing)} tensor(s) of {reference_dir}, e.g. {missing[0]}",
                    "merge only fine-tunes of one architecture and base (same layers, same vocabulary)",
                )
            for name in reference.names():
                if source.shape(name) != reference.shape(name):
                    raise EngineError(
                        f"models[{number}] ({path}): {name} has shape {source.shape(name)}, {reference_dir} has {reference.shape(name)}",
                        "merge only fine-tunes of one base (a resized vocabulary does not merge)",
                    )


def _check_local_models(config: dict) -> None:
    """A model named by a path that is not there, said plainly (mergekit would take it for a hub id)."""
    named = [config.get("base_model")]
    named += [m.get("model") for m in config.get("models") or [] if isinstance(m, dict)]
    for piece in config.get("slices") or []:
        named += [s.get("model") for s in (piece.get("sources") or []) if isinstance(s, dict)] if isinstance(piece, dict) else []
    for reference in named:
        for part in str(reference).split("+") if isinstance(reference, str) else []:
            if part.startswith(("/", "./", "../", "~")) and not Path(part).expanduser().exists():
                raise EngineError(f"mergekit: the model {part} is not there", "fix the path in the merge configuration")


def mergekit_config(preset, source_dirs: list[Path] | None = None) -> dict[str, Any]:
    """The mergekit configuration a merge preset stands for; its output dtype is always preset.dtype.

    A `method: mergekit` preset carries its configuration as it is. The other methods become the
    mergekit configuration of the same merge, computed in fp32; a setting left unset (normalize)
    takes mergekit's default for the method.
    """
    out_dtype = MERGEKIT_DTYPES[preset.dtype]
    if preset.method == "mergekit":
        return {**copy.deepcopy(preset.mergekit), "out_dtype": out_dtype}
    method = preset.method
    paths = [str(p) for p in (source_dirs or [Path(s.path) for s in preset.models])]
    models = []
    for source, path in zip(preset.models, paths):
        parameters: dict[str, Any] = {}
        if method != "slerp":
            parameters["weight"] = source.weight
        if method in SPARSIFYING_METHODS:
            parameters["density"] = source.density
        models.append({"model": path, "parameters": parameters} if parameters else {"model": path})
    shared: dict[str, Any] = {}
    config: dict[str, Any] = {"merge_method": method, "models": models, "dtype": "float32", "out_dtype": out_dtype}
    if method == "slerp":
        config["base_model"] = paths[0]  # mergekit's t = 0 is its base model: our first model
        shared["t"] = preset.t
    if method in TASK_VECTOR_METHODS:
        config["base_model"] = str(preset.base_model)
        shared["lambda"] = preset.lambda_
    if preset.normalize is not None and method != "slerp":
        shared["normalize"] = preset.normalize
    if shared:
        config["parameters"] = shared
    return config


def _validated(config: dict):
    """mergekit's own validation, its complaints reported with the key path they concern."""
    from mergekit.config import MergeConfiguration
    from pydantic import ValidationError

    try:
        return MergeConfiguration.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()[:5])
        raise EngineError(f"mergekit refuses the configuration: {problems}",
                          "fix these keys (mergekit's README lists each method's parameters)") from None


@contextlib.contextmanager
def _watched_executor(sink: Sink):
    """Let mergekit's executor report progress to the sink and stop at a cancel between tensors.

    mergekit.merge.run_merge builds its Executor by name; a subclass wrapping its result stream is
    the one hook it leaves, and the rest of run_merge (planning, config, tokenizer) stays mergekit's.
    """
    import mergekit.merge as mergekit_merge

    class WatchedExecutor(mergekit_merge.Executor):
        def run(self, quiet: bool = False, desc: str | None = None):
            total = len(self.targets)
            for done, item in enumerate(super().run(quiet=quiet, desc=desc), start=1):
                reason = sink.should_stop()
                if reason:
                    sink.event("warning", f"merge stopped ({reason}) after {done} of {total} tensors; nothing was written")
                    raise JobStopped(reason)
                sink.metrics(done, {"tensors_done": done, "tensors_total": total})
                yield item

    original = mergekit_merge.Executor
    mergekit_merge.Executor = WatchedExecutor
    try:
        yield
    finally:
        mergekit_merge.Executor = original


def run_mergekit(config: dict, out_path: Path, *, seed: int, sink: Sink, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Run one mergekit configuration into `out_path`, as mergekit's own `mergekit-yaml` would."""
    from mergekit.merge import run_merge as mergekit_run_merge
    from mergekit.options import MergeOptions

    merge_config = _validated(config)
    options = MergeOptions(
        copy_tokenizer=True, random_seed=seed, quiet=True, lazy_unpickle=False, out_shard_size=max_shard_bytes,
        # The result folder's README.md is tunebench's model card; the configuration is kept below.
        write_model_card=False,
    )
    with _watched_executor(sink):
        try:
            mergekit_run_merge(merge_config, str(out_path), options=options)
        except (JobStopped, EngineError):
            raise
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            raise EngineError(f"mergekit could not merge: {exc}",
                              "check the models' paths, that they share an architecture, and the layer ranges") from None
    (out_path / MERGEKIT_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _tensor_count(folder: Path) -> int:
    with contextlib.ExitStack() as stack:
        return len(SafetensorsModel(folder, stack).names())


def merge_models(preset, out_dir: str | Path, sink: Sink | None = None, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict[str, Any]:
    """Merge several models with mergekit (see the module docstring)."""
    sink = sink or Sink()
    started = time.time()
    out_dir = Path(out_dir)
    method = preset.method
    if method in ("linear", "dare_linear", "ties", "dare_ties") and preset.normalize is not False:
        if abs(sum(s.weight for s in preset.models)) < 1e-12:
            raise EngineError("models' weights sum to 0, so normalize would divide by zero", "change the weights or set normalize: false")
    with _staging(out_dir) as staging:
        source_dirs = None
        if method != "mergekit":
            source_dirs = _source_dirs(preset, staging, sink)
            reference = Path(preset.base_model) if method in TASK_VECTOR_METHODS else source_dirs[0]
            _check_same_tensors(reference, source_dirs)
        else:
            _check_local_models(preset.mergekit)
        config = mergekit_config(preset, source_dirs)
        what = config.get("merge_method")
        sink.event("info", f"{what} merge with mergekit" + (f" ({len(preset.models)} model(s))" if preset.models else ""))
        run_mergekit(config, staging, seed=preset.seed, sink=sink, max_shard_bytes=max_shard_bytes)
        shutil.rmtree(staging / "_sources", ignore_errors=True)
        shards = sorted(p.name for p in staging.glob("*.safetensors"))
        summary = {
            "status": "completed", "method": method, "merge_method": what, "models": [s.model_dump() for s in preset.models],
            "base_model": config.get("base_model"),
            # our preset form's settings; a mergekit configuration carries its own (below)
            "t": preset.t if method == "slerp" else None, "normalize": preset.normalize,
            "lambda": preset.lambda_ if method in TASK_VECTOR_METHODS else None,
            "seed": preset.seed, "dtype": preset.dtype, "tensors": _tensor_count(staging), "shards": len(shards),
            "size_bytes": _dir_size(staging), "output": str(out_dir), "seconds": round(time.time() - started, 2),
            "mergekit": config,
        }
        _write_report(staging, summary)
    sink.event("info", f"saved the merged model ({preset.dtype}, {human_bytes(summary['size_bytes'])}) to {out_dir}")
    return summary
