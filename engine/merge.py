"""Merging: fold an adapter into its base, or merge several fine-tunes of one base.

Adapter merge (`method: adapter`): the base is loaded in fp32 — never in 4-bit, even for a QLoRA
adapter — the adapter is applied and `merge_and_unload`ed, and the merged model's logits are
compared with the adapter model's on a few probe inputs. Past `preset.tolerance` the merge fails
with an EngineError; otherwise the model is saved as safetensors, with its tokenizer, in
`preset.dtype`, reloaded with plain transformers and checked once more.

Multi-model merges (linear, slerp, task_arithmetic, ties, dare_linear, dare_ties) follow mergekit's
semantics. They read one tensor at a time from every source (safetensors `safe_open`), combine it
and write shards as they fill, so memory stays near one model's size whatever the number of models:

    linear           Σ wᵢ θᵢ  (/ Σ wᵢ when normalize)
    slerp            spherical interpolation of θ₀ and θ₁ at t (linear when nearly parallel)
    task_arithmetic  θ_base + λ Σ wᵢ τᵢ                      τᵢ = θᵢ − θ_base
    ties             τᵢ magnitude-pruned to densityᵢ, sign elected on Σ wᵢ τᵢ, only agreeing
                     entries summed (/ Σ of their weights when normalize), then θ_base + λ ·
    dare_linear      τᵢ randomly dropped to densityᵢ and rescaled by 1/densityᵢ, then as linear
    dare_ties        the DARE drop, then TIES' sign election and disjoint sum

Pruning, sign election and the weighted sum are peft's (peft.utils.merge_utils); peft's own
`ties`/`dare_*` take one density for all models and divide by a count of models rather than by
weights, so they are composed here from its parts.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from engine.artifacts import human_bytes
from engine.errors import EngineError
from engine.models import quiet_libraries
from engine.outcome import JobOutcome, JobStopped
from engine.sink import Sink

SAFETENSORS_INDEX = "model.safetensors.index.json"
SINGLE_SAFETENSORS = "model.safetensors"
REPORT_FILE = "merge_report.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3
SLERP_DOT_THRESHOLD = 0.9995
_PROMPT_LEARNING = {"PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT"}
TASK_VECTOR_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")


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


# --------------------------------------------------------------------------- tensor-wise merge math


def slerp(t: float, v0, v1, eps: float = 1e-8):
    """Spherical interpolation of two tensors seen as flat vectors (mergekit's rule).

    The angle comes from the normalised vectors, the interpolation applies to the originals; nearly
    parallel vectors fall back to linear interpolation, where slerp is numerically unstable.
    """
    import torch

    if t <= 0:
        return v0.clone()
    if t >= 1:
        return v1.clone()
    a, b = v0.double().flatten(), v1.double().flatten()
    a_unit = a / a.norm().clamp_min(eps)
    b_unit = b / b.norm().clamp_min(eps)
    dot = float(torch.dot(a_unit, b_unit))
    if abs(dot) > SLERP_DOT_THRESHOLD:
        result = (1 - t) * a + t * b
    else:
        import math

        theta = math.acos(max(-1.0, min(1.0, dot)))
        s0 = math.sin((1 - t) * theta) / math.sin(theta)
        s1 = math.sin(t * theta) / math.sin(theta)
        result = s0 * a + s1 * b
    return result.reshape(v0.shape).to(v0.dtype)


def _sparsify(delta, density: float, how: str):
    from peft.utils.merge_utils import prune

    if density >= 1:  # nothing to drop (peft would warn)
        return delta
    if how == "magnitude":
        return prune(delta, density, method="magnitude")
    return prune(delta, density, method="random", rescale=True)


def merge_tensor(
    method: str,
    tensors: list,
    base=None,
    *,
    weights: list[float],
    densities: list[float] | None = None,
    t: float = 0.5,
    normalize: bool = True,
    lambda_: float = 1.0,
):
    """Merge one tensor across models (all fp32, same shape). DARE draws from torch's current RNG."""
    import torch
    from peft.utils.merge_utils import calculate_majority_sign_mask, reshape_weight_task_tensors, task_arithmetic

    weight_tensor = torch.tensor(weights, dtype=tensors[0].dtype)
    densities = densities or [1.0] * len(tensors)
    if method == "linear":
        mixed = task_arithmetic(list(tensors), weight_tensor)
        return mixed / weight_tensor.sum() if normalize else mixed
    if method == "slerp":
        return slerp(t, tensors[0], tensors[1])
    if base is None:
        raise ValueError(f"{method} needs the base tensor")
    deltas = [x - base for x in tensors]
    if method == "task_arithmetic":
        return base + lambda_ * task_arithmetic(deltas, weight_tensor)
    prune_how = "magnitude" if method == "ties" else "random"
    deltas = [_sparsify(d, density, prune_how) for d, density in zip(deltas, densities)]
    if method == "dare_linear":
        mixed = task_arithmetic(deltas, weight_tensor)
        if normalize:
            mixed = mixed / weight_tensor.sum()
        return base + lambda_ * mixed
    if method in ("ties", "dare_ties"):
        stacked = torch.stack(deltas)
        weighted = stacked * reshape_weight_task_tensors(stacked, weight_tensor)
        agree = calculate_majority_sign_mask(weighted, method="total")
        mixed = (weighted * agree).sum(dim=0)
        if normalize:
            divisor = (reshape_weight_task_tensors(stacked, weight_tensor) * agree).sum(dim=0)
            divisor[divisor == 0] = 1
            mixed = mixed / divisor
        return base + lambda_ * mixed
    raise ValueError(f"unknown merge method {method!r}")


# --------------------------------------------------------------------------- tensor-wise I/O


class SafetensorsModel:
    """A model folder's tensors, read one at a time without loading the model."""

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

    def get(self, name: str):
        return self._handles[self.weight_map[name]].get_tensor(name)


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes`, then the HF index."""

    def __init__(self, out_dir: Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.out_dir = out_dir
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out_dir / f"shard-{len(self._shards) + 1}.tmp"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[str]:
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            os.replace(self._shards[0][0], self.out_dir / SINGLE_SAFETENSORS)
            return [SINGLE_SAFETENSORS]
        weight_map, names = {}, []
        for number, (path, tensors) in enumerate(self._shards, start=1):
            name = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(path, self.out_dir / name)
            weight_map.update({tensor: name for tensor in tensors})
            names.append(name)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")
        return names


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


def _tensor_seed(seed: int, index: int) -> int:
    # One seed per tensor: the DARE drop of a tensor does not depend on the order others were merged in.
    return (seed * 1_000_003 + index) % (2**63)


def merge_models(preset, out_dir: str | Path, sink: Sink | None = None, *, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict[str, Any]:
    """Merge several fine-tunes of one base, tensor by tensor (see the module docstring)."""
    import torch
    from transformers import AutoTokenizer

    sink = sink or Sink()
    started = time.time()
    out_dir = Path(out_dir)
    method = preset.method
    weights = [s.weight for s in preset.models]
    densities = [s.density for s in preset.models]
    if method in ("linear", "dare_linear", "ties", "dare_ties") and preset.normalize and abs(sum(weights)) < 1e-12:
        raise EngineError("models' weights sum to 0, so normalize: true would divide by zero", "change the weights or set normalize: false")
    needs_base = method in TASK_VECTOR_METHODS
    out_dtype = torch_dtype(preset.dtype)

    with _staging(out_dir) as staging, contextlib.ExitStack() as stack:
        source_dirs = _source_dirs(preset, staging, sink)
        sources = [SafetensorsModel(path, stack) for path in source_dirs]
        base = SafetensorsModel(preset.base_model, stack) if needs_base else None
        reference = base or sources[0]
        reference_dir = Path(preset.base_model) if needs_base else source_dirs[0]
        names = reference.names()
        for number, source in enumerate(sources):
            missing = [n for n in names if n not in source.weight_map]
            if missing:
                raise EngineError(
                    f"models[{number}] ({source.path}) lacks {len(missing)} tensor(s) of {reference.path}, e.g. {missing[0]}",
                    "merge only fine-tunes of one architecture and base (same layers, same vocabulary)",
                )
            for name in names:
                if source.shape(name) != reference.shape(name):
                    raise EngineError(
                        f"models[{number}] ({source.path}): {name} has shape {source.shape(name)}, {reference.path} has {reference.shape(name)}",
                        "merge only fine-tunes of one base (a resized vocabulary does not merge)",
                    )
        sink.event("info", f"{method} merge of {len(sources)} model(s), {len(names)} tensors"
                   + (f", base {preset.base_model}" if needs_base else ""))
        writer = ShardWriter(staging, max_shard_bytes)
        report_every = max(1, len(names) // 100)
        for index, name in enumerate(names):
            reason = sink.should_stop()
            if reason:
                sink.event("warning", f"merge stopped ({reason}) after {index} of {len(names)} tensors; nothing was written")
                raise JobStopped(reason)
            first = reference.get(name)
            if not first.is_floating_point():  # integer buffers are not merged
                writer.add(name, first)
                continue
            tensors = [s.get(name).float() for s in sources]
            base_tensor = base.get(name).float() if base else None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_tensor_seed(preset.seed, index))
                merged = merge_tensor(
                    method, tensors, base_tensor, weights=weights, densities=densities, t=preset.t,
                    normalize=preset.normalize, lambda_=preset.lambda_,
                )
            writer.add(name, merged.to(out_dtype))
            if (index + 1) % report_every == 0 or index + 1 == len(names):
                sink.metrics(index + 1, {"tensors_done": index + 1, "tensors_total": len(names)})
        shard_files = writer.finish()
        _write_config(reference_dir, staging, preset.dtype)
        tokenizer_dir = next((d for d in [*source_dirs, reference_dir] if (d / "tokenizer_config.json").is_file()), None)
        if tokenizer_dir is not None:
            AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(staging)
        else:
            sink.event("warning", "no source has a tokenizer: the merged model is saved without one")
        shutil.rmtree(staging / "_sources", ignore_errors=True)
        summary = {
            "status": "completed", "method": method, "models": [s.model_dump() for s in preset.models],
            "base_model": preset.base_model, "t": preset.t, "normalize": preset.normalize, "lambda": preset.lambda_,
            "seed": preset.seed, "dtype": preset.dtype, "tensors": len(names), "shards": len(shard_files),
            "size_bytes": _dir_size(staging), "output": str(out_dir), "seconds": round(time.time() - started, 2),
        }
        _write_report(staging, summary)
    sink.event("info", f"saved the merged model ({preset.dtype}, {human_bytes(summary['size_bytes'])}) to {out_dir}")
    return summary


def _write_config(source_dir: Path, staging: Path, dtype: str) -> None:
    config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
    name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    config["dtype"] = name
    config.pop("torch_dtype", None)  # transformers 5 reads dtype; a stale torch_dtype would contradict it
    (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    generation = source_dir / "generation_config.json"
    if generation.is_file():
        shutil.copy(generation, staging / "generation_config.json")
