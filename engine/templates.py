"""Named chat templates (Jinja, in the Hugging Face `chat_template` dialect) and their lookup.

A preset's `data.chat_template` is None (the tokenizer's own), one of these names, or inline Jinja.
Every template renders each message independently of the ones after it, so a conversation's
rendering starts with the rendering of each of its prefixes: the data pipeline derives the
assistant-only label mask from exactly that property.

Roles: system, user, assistant and tool (tool results). Templates without a native tool role
render tool results the way their model family does or as a user-side turn.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ChatML for tokenizers that lack <|im_end|> as a token: the markers stay plain text, so the
# tokenizer's eos is rendered after each assistant turn to give generation a token to stop on.
CHATML_WITH_EOS = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% if message['role'] == 'assistant' and eos_token is defined %}{{ eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN2 = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3 = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{ '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Mistral instruct (v0.1–v0.3 style): no system role of its own, so a system message is prepended
# to the first user turn; tool results are wrapped in [TOOL_RESULTS].
MISTRAL = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{% set ns.system = '' %}"
    "{% elif message['role'] == 'tool' %}{{ '[TOOL_RESULTS] ' + message['content'] + ' [/TOOL_RESULTS]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

ALPACA = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "{{ 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'tool' %}{{ '### Input:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

NAMED_TEMPLATES: dict[str, str] = {
    "chatml": CHATML,
    "qwen2": QWEN2,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
    "alpaca": ALPACA,
}


def is_inline_template(value: str) -> bool:
    """Inline Jinja rather than a template name."""
    return "{{" in value or "{%" in value


def lookup_template(name: str) -> str:
    """The Jinja source of a named template; KeyError naming the choices for an unknown name."""
    try:
        return NAMED_TEMPLATES[name.strip().lower()]
    except KeyError:
        raise KeyError(f"unknown chat template {name!r}; named templates: {', '.join(NAMED_TEMPLATES)}") from None
