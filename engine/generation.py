"""Token-by-token decoding with a KV cache, right for every adapter method on the current releases.

Why not `generate()` for prompt learning: with transformers 5.24 the cache reaches
`prepare_inputs_for_generation` as `cache` (`past_key_values` is a deprecated alias), while peft 0.21's
prompt-learning hook still looks for `past_key_values`. It finds none, so every decode step feeds the
whole sequence again on top of a cache that already holds it: prompt- and prefix-tuning answers from
`generate()` are wrong, silently. Here the prefill goes through the PeftModel (which prepends the virtual
tokens or builds the prefix cache) and every later step through the bare base model with that cache,
which already holds the virtual tokens; layer adapters (LoRA, IA3) run every step through their model.

Nothing here is imported at TUI start-up: torch is imported inside functions.
"""

from __future__ import annotations

import functools
import inspect


def is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def cache_kwarg(model) -> str:
    """The name the model's forward takes its KV cache by: `cache` since transformers 5.24 (which keeps
    `past_key_values` as a deprecated alias, to be removed), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg_of(type(base))


def forward_step(model, input_ids, cache):
    """One forward of `input_ids` (1 × n) after `cache` (None for the prefill): (last-position logits, cache).

    The prefill passes no cache at all, so peft's prompt-learning forward builds its own (the prefix)."""
    import torch

    kwargs = {"input_ids": input_ids, "use_cache": True}
    name = cache_kwarg(model)
    if cache is None:
        kwargs["attention_mask"] = torch.ones_like(input_ids)
    else:
        kwargs[name] = cache
    out = model(**kwargs)
    return out.logits[:, -1, :], getattr(out, name)


def step_model(model, prefilled: bool):
    """The module a step runs through: a prompt-learning model's decode steps go to its bare base model,
    because the virtual tokens are already in the cache after the prefill."""
    if prefilled and is_prompt_learning(model):
        return model.get_base_model()
    return model


def greedy_decode(model, prompt_ids: list[int], *, max_new_tokens: int, stop_ids: set[int]) -> list[int]:
    """Greedy continuation of one prompt, stopping before the first stop token."""
    import torch

    device = next(model.parameters()).device
    generated: list[int] = []
    cache = None
    input_ids = torch.tensor([prompt_ids], device=device)
    with torch.inference_mode():
        while len(generated) < max_new_tokens:
            logits, cache = forward_step(step_model(model, cache is not None), input_ids, cache)
            token = int(logits.argmax(dim=-1)[0])
            if token in stop_ids:
                break
            generated.append(token)
            input_ids = torch.tensor([[token]], device=device)
    return generated
