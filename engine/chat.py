"""Side-by-side chat: a base model and a fine-tuned result (or two checkpoints), streaming both at once.

Loading: an adapter (LoRA family, IA3, prompt learning) is attached to ONE copy of the base weights;
the base answer comes from the same PeftModel with its adapter layers disabled, two checkpoints of one
run are two named adapters on that model. A full fine-tune (a model folder) is a second model: `plan()`
says how much memory it takes before `load(..., allow_second_model=True)` loads it.

Generation design: one thread runs a token loop that interleaves the two sides step by step, each side
with its own KV cache, switching the adapter state before every forward. Two threads calling
`generate()` on one shared PeftModel would race on that switch (it is global module state), and
batching both sides would need peft's mixed-adapter batches, which leave out IA3 and prompt learning.
Interleaving is correct for every method, stops within one forward step, and costs a toggle per token
(a flag on each adapter layer, well under a millisecond on the tiny model; see bench/chat_toggle.py).
Both sides share the device, so each side's tokens/s is about half of what it would get alone.

Nothing here is imported at TUI start-up: torch, transformers and peft are imported inside functions.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from engine.artifacts import human_bytes, is_adapter_dir
from engine.errors import EngineError
from engine.generation import is_prompt_learning

PROMPT_LEARNING_TYPES = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING")
# Stored size of each safetensors dtype, for memory estimates without torch.
_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}
_TORCH_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "fp32": 4, "fp16": 2, "bf16": 2}
ProgressFn = Callable[[float, str], None]


# --------------------------------------------------------------------------- settings and results


@dataclass
class GenerationSettings:
    """The same settings drive both sides. temperature 0 = greedy (the default)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.max_new_tokens < 1:
            found.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            found.append(f"temperature must be 0 (greedy) or positive (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            found.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            found.append(f"top_k must be 0 (off) or positive (got {self.top_k})")
        if self.repetition_penalty <= 0:
            found.append(f"repetition_penalty must be positive, 1.0 = off (got {self.repetition_penalty})")
        return found

    def check(self) -> "GenerationSettings":
        problems = self.problems()
        if problems:
            raise EngineError("bad generation settings: " + "; ".join(problems), "fix the values in the settings panel or on the command line")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class AnswerStats:
    tokens: int = 0
    ttft_s: float | None = None  # request start → first token of this side
    tokens_per_s: float | None = None  # decode rate, first → last token
    elapsed_s: float = 0.0
    finish: str = ""  # eos | length | stopped

    def line(self) -> str:
        ttft = f"{self.ttft_s * 1000:.0f} ms" if self.ttft_s is not None else "–"
        rate = f"{self.tokens_per_s:.1f} tok/s" if self.tokens_per_s is not None else "– tok/s"
        return f"TTFT {ttft} · {rate} · {self.tokens} tokens" + (f" · {self.finish}" if self.finish else "")


@dataclass
class Answer:
    side: int
    text: str
    token_ids: list[int]
    stats: AnswerStats


@dataclass
class ChatEvent:
    """One streaming update: `delta` is new text of side `side`; `text` is all of it so far."""

    side: int
    delta: str
    text: str
    done: bool = False
    answer: Answer | None = None  # set on the last event of a side


@dataclass(frozen=True)
class SideSpec:
    label: str
    kind: str  # base | adapter | model
    path: str | None  # adapter or model folder; None for the base
    adapter_name: str | None = None


@dataclass(frozen=True)
class ModelMemory:
    path: str
    params: int
    bytes: int
    dtype: str

    def human(self) -> str:
        return f"{human_bytes(self.bytes)} ({self.params / 1e6:.1f}M params, {self.dtype})"


@dataclass
class LoadPlan:
    """What `load` will put in memory. Every model beyond the first is a full second copy."""

    base_path: str
    sides: list[SideSpec]
    models: list[ModelMemory]  # full models to load, in order
    adapters: list[str] = field(default_factory=list)

    @property
    def shares_base(self) -> bool:
        return len(self.models) == 1

    @property
    def extra_model_bytes(self) -> int:
        return sum(m.bytes for m in self.models[1:])

    @property
    def needs_confirmation(self) -> bool:
        return len(self.models) > 1

    def describe(self) -> str:
        if self.shares_base:
            what = " and ".join(s.label for s in self.sides)
            return f"one copy of the base weights ({self.models[0].human()}) serves {what}"
        loads = "; ".join(f"{Path(m.path).name}: {m.human()}" for m in self.models)
        return f"{len(self.models)} full models in memory — {loads}; the second costs {human_bytes(self.extra_model_bytes)}"


@dataclass
class Turn:
    prompt: str
    answers: list[Answer]


# --------------------------------------------------------------------------- memory estimates (no torch)


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def estimate_model_memory(path: str | Path, dtype: str | None = None) -> ModelMemory:
    """Parameter count × dtype size of a model folder, from safetensors headers (or file sizes).

    `dtype` (fp32/bf16/fp16) is the dtype it will be loaded in; None = as stored.
    """
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    params = stored = 0
    stored_dtype = None
    if files:
        for file in files:
            for name, entry in _safetensors_header(file).items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                params += count
                stored += count * _DTYPE_BYTES.get(entry["dtype"], 4)
                stored_dtype = stored_dtype or entry["dtype"].lower()
    else:
        bins = sorted(path.glob("pytorch_model*.bin")) or sorted(path.glob("*.bin"))
        if not bins:
            raise EngineError(f"{path}: no model weights (*.safetensors or pytorch_model*.bin)", "point at a model folder")
        stored = sum(f.stat().st_size for f in bins)
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
        stored_dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
        params = stored // _TORCH_DTYPE_BYTES.get(stored_dtype, 4)
    if dtype and dtype != "auto":
        return ModelMemory(str(path), params, params * _TORCH_DTYPE_BYTES.get(dtype, 4), dtype)
    return ModelMemory(str(path), params, stored, stored_dtype or "unknown")


# --------------------------------------------------------------------------- the session


class _Decoder:
    """Incremental detokenisation: decodes a window that restarts after each newline (like
    transformers' TextStreamer), so a long answer is not re-decoded from its start every token, and
    holds back a partial UTF-8 character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.window: list[int] = []
        self.window_text = ""
        self.text = ""

    def push(self, token_id: int) -> str:
        self.window.append(token_id)
        decoded = self.tokenizer.decode(self.window, skip_special_tokens=True)
        if decoded.endswith("\ufffd"):
            return ""
        delta = decoded[len(self.window_text):] if decoded.startswith(self.window_text) else ""
        self.window_text = decoded
        self.text += delta
        if delta.endswith("\n"):
            self.window, self.window_text = [], ""
        return delta


@dataclass
class _Running:
    side: int
    prompt_ids: list[int]
    decoder: _Decoder
    generator: object
    cache: object = None
    generated: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None
    finish: str = ""


class ChatSession:
    """A loaded comparison: sides[0] (base or checkpoint A) and sides[1] (fine-tuned or checkpoint B).

    With no target there is one side, the base model alone.
    """

    def __init__(self, *, tokenizer, sides: list[SideSpec], peft_model, models: dict[str, object], plan: LoadPlan,
                 chat_template: str | None, system_prompt: str | None, device: str):
        self.tokenizer = tokenizer
        self.sides = sides
        self.plan = plan
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.device = device
        self._peft = peft_model  # the shared base with its adapters, or None
        self._models = models  # full models by path ("" = the base without adapters)
        self._prompt_learning = is_prompt_learning(peft_model)
        # the adapter layers, found once: a switch then touches only them, not every module of the model
        self._adapter_layers = _adapter_layers(peft_model) if peft_model is not None and not self._prompt_learning else []
        self._active_adapter = peft_model.active_adapter if peft_model is not None else None
        self._adapters_enabled = True
        self._devices: dict[int, str] = {}  # side → device of its model's weights
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._generation_lock = threading.Lock()
        self.histories: list[list[dict]] = [[] for _ in sides]
        self.turns: list[Turn] = []
        self.stop_token_ids = _stop_token_ids(tokenizer, list(models.values()) + ([peft_model] if peft_model is not None else []))

    # ------------------------------------------------------------------ loading

    @staticmethod
    def plan_load(base_path: str | Path, target: str | Path | None = None, *, compare_to: str | Path | None = None,
                  model_config=None, device: str | None = None, labels: tuple[str, str] | None = None) -> LoadPlan:
        """What `load` would hold in memory, from the weight files' headers: call it first and ask the
        user before a second full model. `model_config` (presets ModelConfig) gives dtype and quantization."""
        base_path = str(base_path)
        if not Path(base_path).is_dir() and not _looks_like_hub_id(base_path):
            raise EngineError(f"base model {base_path}: no such folder", "pass the folder of the base model (or a hub id)")
        specs = []
        paths = [compare_to, target] if target is not None else [compare_to]
        default_labels = ("base", "fine-tuned") if compare_to is None else (None, None)
        adapters: list[str] = []
        needs_base = False
        for index, path in enumerate(paths):
            label = (labels[index] if labels else None) or default_labels[index] or _label(path)
            if path is None:
                specs.append(SideSpec(label, "base", None))
                needs_base = True
            elif not Path(path).is_dir():
                raise EngineError(f"{path}: no such folder", "pass an adapter folder (with adapter_config.json) or a model folder")
            elif is_adapter_dir(path):
                specs.append(SideSpec(label, "adapter", str(path), f"side{index}"))
                adapters.append(str(path))
                needs_base = True
            elif (Path(path) / "config.json").is_file():
                specs.append(SideSpec(label, "model", str(path)))
            else:
                raise EngineError(f"{path}: neither an adapter (adapter_config.json) nor a model (config.json)",
                                  "pass a run's final/ folder, a checkpoint folder, or a model folder")
        if len(specs) == 2 and specs[0].path == specs[1].path:
            raise EngineError(f"both sides are {specs[0].path or 'the base model'}", "pick two different results to compare")
        if len(adapters) == 2 and len({_adapter_family(p) for p in adapters}) > 1:
            raise EngineError("the two adapters are of different families (prompt learning and layer adapters)",
                              "compare each one with the base instead")
        dtype = _load_dtype(model_config, device)
        quant = getattr(getattr(model_config, "quantization", None), "mode", "none")
        models = [_model_memory(base_path, dtype, quant)] if needs_base else []
        models += [_model_memory(spec.path, dtype, "none") for spec in specs if spec.kind == "model"]
        return LoadPlan(base_path=base_path, sides=specs, models=models, adapters=adapters)

    @classmethod
    def load(cls, base_path: str | Path, target: str | Path | None = None, *, chat_template: str | None = None,
             system_prompt: str | None = None, compare_to: str | Path | None = None, model_config=None,
             device: str | None = None, labels: tuple[str, str] | None = None, allow_second_model: bool = False,
             progress: ProgressFn | None = None) -> "ChatSession":
        """Load once: the base (every adapter attached to that one copy) and any full fine-tuned model.

        `target`: adapter or model folder, compared with `compare_to` (None = the base itself).
        `chat_template`: the run's data.chat_template (name, inline Jinja, or None = the tokenizer's), as in training.
        `model_config`: the run's presets ModelConfig (dtype, quantization, attention) for the base.
        A second full model is refused unless `allow_second_model` (`plan_load` says its size).
        `progress(fraction, message)` is called as loading advances.
        """
        report = progress or (lambda fraction, message: None)
        report(0.02, "reading the model files")
        plan = cls.plan_load(base_path, target, compare_to=compare_to, model_config=model_config, device=device, labels=labels)
        if plan.needs_confirmation and not allow_second_model:
            raise EngineError(f"this comparison loads a second full model: {plan.describe()}",
                              "confirm the memory it takes (allow_second_model=True, or --yes on the command line)")
        report(0.05, "importing torch and transformers")
        import torch

        from engine.models import load_tokenizer, quiet_libraries, training_device

        quiet_libraries()  # no progress bars of transformers' own on the terminal or under the TUI

        device = torch.device(device) if device else training_device()
        base_config = _model_config(model_config, str(base_path))
        report(0.15, "loading the tokenizer")
        # a result folder carries the tokenizer it was trained with (special tokens may have been added)
        tokenizer_dir = next((s.path for s in plan.sides if s.path and (Path(s.path) / "tokenizer_config.json").is_file()), None)
        if tokenizer_dir:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        else:
            tokenizer = load_tokenizer(base_config)
        models: dict[str, object] = {}
        peft_model = None
        steps = len(plan.models) + len(plan.adapters)
        done = 0
        if any(s.kind in ("base", "adapter") for s in plan.sides):
            report(0.2, f"loading the base weights ({plan.models[0].human()})")
            base = _load_causal_lm(base_config, device)
            done += 1
            for spec in plan.sides:
                if spec.kind != "adapter":
                    continue
                report(0.2 + 0.75 * done / steps, f"attaching adapter {spec.label}")
                peft_model = _attach_adapter(peft_model, base, spec)
                done += 1
            if peft_model is None:
                models[""] = base
            else:
                peft_model.eval()
        for spec in plan.sides:
            if spec.kind == "model":
                report(0.2 + 0.75 * done / steps, f"loading {spec.label}")
                models[spec.path] = _load_causal_lm(_model_config(model_config, spec.path), device)
                done += 1
        report(1.0, "ready")
        return cls(tokenizer=tokenizer, sides=plan.sides, peft_model=peft_model, models=models, plan=plan,
                   chat_template=chat_template, system_prompt=system_prompt, device=str(device))

    def close(self) -> None:
        """Release the weights (and CUDA memory) now rather than at garbage collection."""
        self.stop(timeout=30)  # a forward step in flight finishes before its model goes
        self._peft = None
        self._models.clear()
        import gc

        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ adapter switching

    def activate(self, side: int) -> None:
        """Put the shared model in the state of `side`: adapter layers off for the base, else that adapter on.

        peft's per-layer switches (enable_adapters / set_adapter) on the layers found at load time: the
        model-wide calls walk every module of the model three times per switch.
        """
        spec = self.sides[side]
        wanted = spec.adapter_name if spec.kind == "adapter" else None
        if self._peft is None:
            return
        if self._prompt_learning:
            # the base side calls the bare model (see _forward): only a second prompt needs switching to
            if wanted is not None and wanted != self._active_adapter:
                self._peft.set_adapter(wanted, inference_mode=True)
                self._active_adapter = wanted
            return
        if wanted is None:
            if self._adapters_enabled:
                for layer in self._adapter_layers:
                    layer.enable_adapters(False)
                self._adapters_enabled = False
            return
        if not self._adapters_enabled:
            for layer in self._adapter_layers:
                layer.enable_adapters(True)
            self._adapters_enabled = True
        if wanted != self._active_adapter:
            for layer in self._adapter_layers:
                layer.set_adapter(wanted, inference_mode=True)
            self._peft.base_model.active_adapter = wanted  # the config peft's forward consults
            self._active_adapter = wanted

    def _forward(self, running: _Running, input_ids):
        from engine.generation import forward_step, step_model

        spec = self.sides[running.side]
        self.activate(running.side)
        if spec.kind == "model":
            model = self._models[spec.path]
        elif self._peft is None:
            model = self._models[""]
        elif self._prompt_learning and spec.kind == "base":
            model = self._peft.get_base_model()  # the base of a prompt-learning model is the bare model
        else:
            model = step_model(self._peft, prefilled=running.cache is not None)
        logits, running.cache = forward_step(model, input_ids, running.cache)
        return logits

    # ------------------------------------------------------------------ generation

    def render(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of `messages` with the generation prompt, by the training template."""
        from engine.data import prompt_ids

        return prompt_ids(self.tokenizer, messages, chat_template=self.chat_template, tools=tools)

    def _with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt and not any(m["role"] == "system" for m in messages):
            return [{"role": "system", "content": self.system_prompt}] + list(messages)
        return list(messages)

    def stream(self, conversations: list[list[dict]], settings: GenerationSettings | None = None, *,
               tools: list[dict] | None = None) -> Iterator[ChatEvent]:
        """Generate an answer to each side's conversation, interleaving the sides token by token.

        `conversations[i]` is side i's message list (the system prompt is added when missing).
        Yields ChatEvents; the last event of each side has done=True and its Answer.
        """
        settings = (settings or GenerationSettings()).check()
        if len(conversations) != len(self.sides):
            raise ValueError(f"expected {len(self.sides)} conversations, got {len(conversations)}")
        prompts = [self.render(self._with_system(c), tools) for c in conversations]
        if self._idle.is_set():  # here, not in the loop: a stop() between this call and the first token still counts
            self._stop.clear()
        return self._token_loop(prompts, settings)

    def _token_loop(self, prompts: list[list[int]], settings: GenerationSettings) -> Iterator[ChatEvent]:
        import torch

        if not self._generation_lock.acquire(blocking=False):
            raise EngineError("a generation is already running", "stop it first (Esc)")
        self._idle.clear()
        try:
            started = time.perf_counter()
            processors = _logits_processors(settings)
            active = []
            for side, ids in enumerate(prompts):
                generator = None
                if not settings.greedy:
                    # same seed on both sides: a difference in answers is the model's, not the dice's
                    generator = torch.Generator(device=self._device_of(side)).manual_seed(settings.seed)
                active.append(_Running(side, ids, _Decoder(self.tokenizer), generator))
            while active:
                for running in list(active):
                    if self._stop.is_set():
                        running.finish = "stopped"
                    else:
                        token = self._next_token(running, processors, settings)
                        now = time.perf_counter()
                        running.first_token_at = running.first_token_at or now
                        running.last_token_at = now
                        if token in self.stop_token_ids:
                            running.finish = "eos"
                        else:
                            running.generated.append(token)
                            delta = running.decoder.push(token)
                            if len(running.generated) >= settings.max_new_tokens:
                                running.finish = "length"
                            if delta:
                                yield ChatEvent(running.side, delta, running.decoder.text)
                    if running.finish:
                        active.remove(running)
                        answer = self._answer(running, started)
                        yield ChatEvent(running.side, "", answer.text, done=True, answer=answer)
        finally:
            self._idle.set()
            self._generation_lock.release()

    def _device_of(self, side: int) -> str:
        if side not in self._devices:
            spec = self.sides[side]
            model = self._models.get(spec.path) if spec.kind == "model" else (self._peft or self._models.get(""))
            self._devices[side] = str(next(model.parameters()).device)
        return self._devices[side]

    def _next_token(self, running: _Running, processors, settings: GenerationSettings) -> int:
        import torch

        with torch.inference_mode():
            if running.cache is None:
                input_ids = torch.tensor([running.prompt_ids], device=self._device_of(running.side))
            else:
                input_ids = torch.tensor([[running.generated[-1]]], device=self._device_of(running.side))
            logits = self._forward(running, input_ids).float()
            if processors:
                seen = torch.tensor([running.prompt_ids + running.generated], device=logits.device)
                for processor in processors:
                    logits = processor(seen, logits)
            if settings.greedy:
                return int(logits.argmax(dim=-1)[0])
            probs = torch.softmax(logits, dim=-1)
            return int(torch.multinomial(probs, 1, generator=running.generator)[0, 0])

    def _answer(self, running: _Running, started: float) -> Answer:
        # a leftover partial character at the end is flushed as is
        text = running.decoder.text
        if running.generated:
            full = self.tokenizer.decode(running.generated, skip_special_tokens=True)
            text = full if len(full) >= len(text) else text
        n = len(running.generated)
        rate = None
        if n > 1 and running.last_token_at and running.first_token_at and running.last_token_at > running.first_token_at:
            rate = (n - 1) / (running.last_token_at - running.first_token_at)
        stats = AnswerStats(
            tokens=n,
            ttft_s=(running.first_token_at - started) if running.first_token_at else None,
            tokens_per_s=rate,
            elapsed_s=time.perf_counter() - started,
            finish=running.finish,
        )
        return Answer(running.side, text, list(running.generated), stats)

    def stop(self, timeout: float = 1.0) -> bool:
        """End generation on every side; True once the token loop has finished (within `timeout`)."""
        self._stop.set()
        return self._idle.wait(timeout)

    @property
    def generating(self) -> bool:
        return not self._idle.is_set()

    # ------------------------------------------------------------------ multi-turn chat

    def ask(self, prompt: str, settings: GenerationSettings | None = None) -> Iterator[ChatEvent]:
        """Add `prompt` to every side's history and stream the answers; they join the history when done."""
        for history in self.histories:
            history.append({"role": "user", "content": prompt})
        return self._run_turn(prompt, settings)

    def regenerate(self, settings: GenerationSettings | None = None) -> Iterator[ChatEvent]:
        """Answer the last prompt again (with new settings, say): its old answers are dropped."""
        if not self.turns and not any(self.histories):
            raise EngineError("nothing to regenerate", "ask something first")
        if self.turns:
            turn = self.turns.pop()
            prompt = turn.prompt
        else:
            prompt = self.histories[0][-1]["content"]
        for history in self.histories:
            while history and history[-1]["role"] == "assistant":
                history.pop()
            if not history or history[-1]["role"] != "user":
                history.append({"role": "user", "content": prompt})
        return self._run_turn(prompt, settings)

    def _run_turn(self, prompt: str, settings: GenerationSettings | None) -> Iterator[ChatEvent]:
        events = self.stream([list(h) for h in self.histories], settings)
        answers: dict[int, Answer] = {}
        try:
            for event in events:
                if event.done:
                    answers[event.side] = event.answer
                yield event
        finally:
            if len(answers) == len(self.sides):
                for side, answer in answers.items():
                    self.histories[side].append({"role": "assistant", "content": answer.text})
                self.turns.append(Turn(prompt, [answers[i] for i in range(len(self.sides))]))
            else:  # abandoned mid-way: forget the prompt so the histories stay user/assistant pairs
                for history in self.histories:
                    if history and history[-1]["role"] == "user":
                        history.pop()

    def answer(self, prompt: str, settings: GenerationSettings | None = None) -> list[Answer]:
        """`ask` drained: the finished answers of every side, in side order."""
        answers = {e.side: e.answer for e in self.ask(prompt, settings) if e.done}
        return [answers[i] for i in range(len(self.sides))]

    def compare(self, messages: list[dict], settings: GenerationSettings | None = None, *,
                tools: list[dict] | None = None) -> list[Answer]:
        """Answer one conversation on every side without touching the histories (probe sets)."""
        conversations = [list(messages) for _ in self.sides]
        answers = {e.side: e.answer for e in self.stream(conversations, settings, tools=tools) if e.done}
        return [answers[i] for i in range(len(self.sides))]

    def clear(self) -> None:
        self.histories = [[] for _ in self.sides]
        self.turns = []

    def transcript(self, settings: GenerationSettings | None = None, **extra) -> dict:
        """A JSON-able record of the conversation, for the run's chat history."""
        return {
            "kind": "chat",
            "sides": [asdict(s) for s in self.sides],
            "base": self.plan.base_path,
            "system_prompt": self.system_prompt,
            "settings": asdict(settings) if settings else None,
            "turns": [
                {"prompt": t.prompt, "answers": [{"text": a.text, "stats": asdict(a.stats)} for a in t.answers]}
                for t in self.turns
            ],
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }


# --------------------------------------------------------------------------- probe sets


@dataclass
class ProbeRow:
    prompt: str
    reference: str
    answers: list[str]
    exact: list[float]
    f1: list[float]
    stats: list[AnswerStats]


@dataclass
class ProbeResult:
    labels: list[str]
    rows: list[ProbeRow]
    settings: GenerationSettings
    source: str = ""

    def summary(self) -> list[dict]:
        """Mean exact match and token F1 per side."""
        n = max(len(self.rows), 1)
        return [
            {
                "label": label,
                "exact_match": sum(r.exact[i] for r in self.rows) / n,
                "token_f1": sum(r.f1[i] for r in self.rows) / n,
            }
            for i, label in enumerate(self.labels)
        ]

    def to_payload(self) -> dict:
        return {
            "kind": "probe",
            "source": self.source,
            "labels": self.labels,
            "settings": asdict(self.settings),
            "summary": self.summary(),
            "rows": [self._row_dict(r) for r in self.rows],
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _row_dict(self, row: ProbeRow) -> dict:
        record = {"prompt": row.prompt, "reference": row.reference}
        for i, label in enumerate(self.labels):
            record[label] = {"answer": row.answers[i], "exact_match": row.exact[i], "token_f1": round(row.f1[i], 4),
                             "tokens": row.stats[i].tokens}
        return record

    def to_jsonl(self, path: str | Path) -> Path:
        lines = [json.dumps(self._row_dict(r), ensure_ascii=False) for r in self.rows]
        return _write_atomic(Path(path), "\n".join(lines) + ("\n" if lines else ""))

    def to_markdown(self, path: str | Path | None = None) -> str | Path:
        """The table as Markdown; written to `path` when given."""
        summary = ", ".join(f"{s['label']}: EM {s['exact_match']:.2f} / F1 {s['token_f1']:.2f}" for s in self.summary())
        head = ["#", "prompt", "reference"] + [f"{label}" for label in self.labels] + [f"EM/F1 {label}" for label in self.labels]
        lines = [f"# Probe set ({len(self.rows)} prompts{', ' + self.source if self.source else ''})", "", summary, "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for index, row in enumerate(self.rows, 1):
            cells = [str(index), row.prompt, row.reference] + row.answers
            cells += [f"{row.exact[i]:.0f} / {row.f1[i]:.2f}" for i in range(len(self.labels))]
            lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        text = "\n".join(lines) + "\n"
        if path is None:
            return text
        return _write_atomic(Path(path), text)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def run_probe(session: ChatSession, examples: Iterable, settings: GenerationSettings | None = None, *,
              source: str = "", on_row: Callable[[int, ProbeRow], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> ProbeResult:
    """Answer each example (engine.data.Example: messages + reference) on every side and score it."""
    from engine.metrics_text import exact_match, token_f1

    settings = settings or GenerationSettings()
    result = ProbeResult([s.label for s in session.sides], [], settings, source)
    for index, example in enumerate(examples):
        if should_stop and should_stop():
            break
        answers = session.compare(list(example.messages), settings, tools=getattr(example, "tools", None))
        if any(a.stats.finish == "stopped" for a in answers):
            break
        texts = [a.text.strip() for a in answers]
        row = ProbeRow(
            prompt=_last_user(example.messages),
            reference=example.reference,
            answers=texts,
            exact=[float(exact_match(t, example.reference)) for t in texts],
            f1=[float(token_f1(t, example.reference)) for t in texts],
            stats=[a.stats for a in answers],
        )
        result.rows.append(row)
        if on_row:
            on_row(index, row)
    return result


@dataclass
class PromptExample:
    """A probe prompt read from a file: the same shape as engine.data.Example."""

    messages: list[dict]
    reference: str


_PROMPT_KEYS = ("prompt", "instruction", "question", "input")
_REFERENCE_KEYS = ("reference", "output", "answer", "response", "completion")


def load_prompt_file(path: str | Path, limit: int | None = None) -> list[PromptExample]:
    """Prompts for a probe set: .txt (one prompt per line), or .jsonl/.json rows with a prompt
    (prompt/instruction/question, + input for alpaca rows) and an optional reference (reference/output/answer)."""
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"{path}: no such file", "pass a .txt, .jsonl or .json file of prompts")
    examples: list[PromptExample] = []
    if path.suffix == ".txt":
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                examples.append(PromptExample([{"role": "user", "content": line.strip()}], ""))
        return examples[:limit] if limit else examples
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise EngineError(f"{path}:{number}: not valid JSON ({exc.msg})", "one JSON object per line") from None
        else:
            rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", "fix the file or use .txt, one prompt per line") from None
    if not isinstance(rows, list):
        raise EngineError(f"{path}: expected a list of rows", "a JSON list of objects, or JSONL")
    for number, row in enumerate(rows, 1):
        if isinstance(row, str):
            examples.append(PromptExample([{"role": "user", "content": row}], ""))
            continue
        if not isinstance(row, dict):
            raise EngineError(f"{path}: row {number} is not an object", "each row needs a prompt (or instruction) key")
        if isinstance(row.get("messages"), list):
            messages = [m for m in row["messages"] if m.get("role") != "assistant"] or row["messages"]
            reference = next((m["content"] for m in reversed(row["messages"]) if m.get("role") == "assistant"), "")
            examples.append(PromptExample(messages, str(row.get("reference", reference))))
            continue
        prompt_key = next((k for k in _PROMPT_KEYS if row.get(k)), None)
        if prompt_key is None:
            raise EngineError(f"{path}: row {number} has none of the keys {', '.join(_PROMPT_KEYS)}", "name the prompt column prompt or instruction")
        prompt = str(row[prompt_key])
        if prompt_key == "instruction" and row.get("input"):
            prompt = f"{prompt}\n{row['input']}"
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        messages.append({"role": "user", "content": prompt})
        reference = next((str(row[k]) for k in _REFERENCE_KEYS if k in row and k != prompt_key), "")
        examples.append(PromptExample(messages, reference))
    return examples[:limit] if limit else examples


# --------------------------------------------------------------------------- loading helpers


def _looks_like_hub_id(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", path)) and not path.startswith((".", "/"))


def _label(path: str | Path | None) -> str:
    if path is None:
        return "base"
    path = Path(path)
    if path.name == "final":
        return "final"
    return path.name


def _adapter_family(path: str) -> str:
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    return "prompt" if config.get("peft_type") in PROMPT_LEARNING_TYPES else "layers"


def _load_dtype(model_config, device: str | None) -> str:
    """The dtype weights will be loaded in (engine.models' rule for frozen weights: the precision)."""
    dtype = getattr(model_config, "dtype", "auto") or "auto"
    if dtype != "auto":
        return dtype
    import torch

    on_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if not on_cuda:
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


_QUANT_BYTES_PER_PARAM = {"4bit": 0.5, "8bit": 1.0}


def _model_memory(path: str, dtype: str, quantization: str) -> ModelMemory:
    if not Path(path).is_dir():
        return ModelMemory(path, 0, 0, dtype)  # a hub id: its size is unknown until downloaded
    memory = estimate_model_memory(path, dtype)
    if quantization in _QUANT_BYTES_PER_PARAM:
        # an estimate: embeddings and norms stay in `dtype`, the rest packs into 4 or 8 bits
        return ModelMemory(path, memory.params, int(memory.params * _QUANT_BYTES_PER_PARAM[quantization]), f"{quantization} ({dtype} compute)")
    return memory


def _attach_adapter(peft_model, base, spec: SideSpec):
    """The first adapter wraps the base in a PeftModel; a second one is loaded next to it, by name."""
    import warnings

    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            # peft reads transformers' deprecated is_gradient_checkpointing: not the user's to see
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            if peft_model is None:
                return PeftModel.from_pretrained(base, spec.path, adapter_name=spec.adapter_name, is_trainable=False)
            peft_model.load_adapter(spec.path, adapter_name=spec.adapter_name, is_trainable=False)
            return peft_model
    except (ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(f"adapter {spec.path} does not fit the base model: {str(exc).splitlines()[0]}",
                          "pick the base model the adapter was trained on (see its adapter_config.json)") from None


def _model_config(base_config, path: str):
    """The run's model section pointed at `path` (dtype, quantization and attention kept for the base;
    a full fine-tune is loaded unquantized in the same dtype)."""
    from presets.schema import ModelConfig

    if base_config is None:
        return ModelConfig(path=path)
    if path == base_config.path:
        return base_config
    return base_config.model_copy(update={"path": path, "quantization": type(base_config.quantization)(), "revision": None})


def _load_causal_lm(model_config, device):
    from engine.models import load_model, resolve_precision

    return load_model(model_config, precision=resolve_precision("auto", device), for_training=False, device=device)


def _stop_token_ids(tokenizer, models: list) -> set[int]:
    """The tokenizer's end-of-turn tokens (as the data pipeline knows them) and the generation config's EOS."""
    from engine.data.render import end_of_turn_ids

    ids = set(end_of_turn_ids(tokenizer))
    for model in models:
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
    return ids


def _adapter_layers(peft_model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper  # modules_to_save copies (lm_head, …)

    return [m for m in peft_model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


def _logits_processors(settings: GenerationSettings) -> list:
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = []
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if not settings.greedy:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
    return processors
