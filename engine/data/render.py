"""Chat templates: which one applies, rendering, and the assistant-only label mask.

The mask is derived by rendering prefixes of the conversation, never by searching the rendered
text for role markers, so it holds for any template, multi-turn included, with or without
`{% generation %}` markers. For the assistant turn at index i:

    start = len(render(messages[:i], add_generation_prompt=True))   # the prompt the model sees
    end   = len(render(messages[:i + 1]))                            # through the turn's closing text

The rendered conversation starts with both renderings when a template renders each message
without looking ahead, so [start, end) is exactly the assistant's text plus the template's closing
text. Templates that render the latest answer differently from the same answer in the history
(Qwen3's <think> block) are handled by rendering the turn as history (see _answer_end); any other
mismatch falls back to the longest common prefix and is counted in DataReport.inexact_masks.
Inside it, tokens after the last end-of-turn token (ChatML's newline after <|im_end|>) belong to
the scaffolding and stay unsupervised: the model learns to stop, not to emit separators.

For the templates in _SLOT_TEMPLATES, which only concatenate a message's content, the renderings
are made once per conversation shape (its roles) with a slot for each content, and each
conversation of that shape fills the slots: the same segments for a string join instead of a
rendering per prefix (DataReport.prefix_rendered counts the conversations that still render them).

Text between answers is tokenized segment by segment, as generation sees it: the prompt is
tokenized on its own, then the model writes the answer.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

from engine.errors import DataError
from engine.templates import ALPACA, CHATML, CHATML_WITH_EOS, LLAMA3, MISTRAL, QWEN2, is_inline_template, lookup_template
from presets.schema import DataConfig

log = logging.getLogger("tunebench.data")
IGNORE_INDEX = -100

# Special tokens that close a turn in common model families (besides the tokenizer's eos).
END_OF_TURN_TOKENS = (
    "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>",
    "<|end_of_text|>", "<|return|>", "<|call|>", "<｜end▁of▁sentence｜>",
)
_SENTINEL = "\x00tunebench-probe\x00"
# Templates in which a message's content reaches the output only concatenated, as is or through
# the function given here (LLAMA3's `| trim`), never tested or measured, and carried into another
# message's rendering (MISTRAL's system prompt) only by concatenation. Their renderings of a
# conversation and of its prefixes are then those of a skeleton conversation (same roles, a slot
# for each content) with the contents put in the slots, so the segments of one skeleton serve every
# conversation of that shape. Any other template takes the exact path, a few renderings a conversation.
_SLOT_TEMPLATES = {CHATML: None, CHATML_WITH_EOS: None, QWEN2: None, MISTRAL: None, ALPACA: None, LLAMA3: str.strip}
_SLOT = "\x00{}\x01"
_SLOT_SPLIT = re.compile("\x00(\\d+)\x01")
_MAX_LAYOUTS = 4096  # conversation shapes remembered per renderer (each costs one exact rendering)
TOOLS_PREAMBLE = (
    "You can call the following tools. To call one, answer with a JSON object "
    '{"name": <tool name>, "arguments": <arguments object>}.\n'
)


@dataclass(frozen=True)
class ResolvedTemplate:
    text: str
    source: str  # "the tokenizer's", "named: chatml", "inline (data.chat_template)", "fallback: ChatML"
    warning: str | None = None


def _tokenizer_template(tokenizer) -> str | None:
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default") or next(iter(own.values()), None)
    return own or None


def _has_token(tokenizer, token: str) -> bool:
    return any(t.content == token for t in getattr(tokenizer, "added_tokens_decoder", {}).values())


def template_for(tokenizer, chat_template: str | None) -> ResolvedTemplate:
    """An explicit name or inline Jinja, else the tokenizer's, else ChatML (with a warning)."""
    if chat_template:
        if is_inline_template(chat_template):
            return ResolvedTemplate(chat_template, "inline (data.chat_template)")
        try:
            return ResolvedTemplate(lookup_template(chat_template), f"named: {chat_template.strip().lower()}")
        except KeyError as exc:
            raise DataError(f"data.chat_template: {exc.args[0]}", "use a named template or inline Jinja") from None
    own = _tokenizer_template(tokenizer)
    if own:
        return ResolvedTemplate(own, "the tokenizer's")
    if _has_token(tokenizer, "<|im_end|>"):
        text, detail = CHATML, ""
    else:
        text, detail = CHATML_WITH_EOS, f" (its markers are plain text here; {getattr(tokenizer, 'eos_token', None)!r} closes each answer)"
    warning = (
        "the tokenizer has no chat template and data.chat_template is unset: using ChatML" + detail +
        ". Set data.chat_template (chatml, llama3, qwen2, mistral, alpaca or inline Jinja) to choose one; "
        "chat with the fine-tune must use the same template."
    )
    return ResolvedTemplate(text, "fallback: ChatML", warning)


def resolve_chat_template(tokenizer, data: DataConfig) -> str:
    """The Jinja template the data is rendered with: the preset's named or inline template, else the
    tokenizer's, else ChatML — the fallback is logged as a warning (and listed in DataReport.warnings)."""
    resolved = template_for(tokenizer, data.chat_template)
    if resolved.warning:
        log.warning(resolved.warning)
    return resolved.text


def end_of_turn_ids(tokenizer) -> set[int]:
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if token.content in END_OF_TURN_TOKENS:
            ids.add(token_id)
    return ids


def _call_text(calls: list[dict]) -> str:
    functions = [c["function"] for c in calls]
    return json.dumps(functions[0] if len(functions) == 1 else functions, ensure_ascii=False)


class ChatRenderer:
    """Renders conversations with one template and splits them into prompt / answer segments."""

    def __init__(self, tokenizer, template: str):
        from transformers.utils.chat_template_utils import (
            _alias_reasoning_fields, _compile_jinja_template, _plain_template_data,
        )

        # render_jinja_template's steps, taken apart: a conversation is made plain data once and its
        # prefixes are slices of it, instead of copying it again for each of the prefix renderings.
        self._compiled = _compile_jinja_template(template)
        self._plain_data = _plain_template_data
        self._alias = _alias_reasoning_fields
        self.tokenizer = tokenizer
        self.template = template
        # Templates written for tools / tool calls mention them; the others get them as text.
        self.native_tools = "tools" in template
        self.native_tool_calls = "tool_calls" in template
        self.special_tokens = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
        self._template_kwargs = _plain_template_data(self.special_tokens)
        self.eot_ids = end_of_turn_ids(tokenizer)
        self._slotted = template in _SLOT_TEMPLATES
        self._fill = _SLOT_TEMPLATES.get(template)
        self._layouts: dict[tuple[str, ...], list | None] = {}
        self.exact_renders = 0  # conversations segmented by the exact path (no slot layout applied)

    # ------------------------------------------------------------------ rendering

    def prepare(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        """Messages as this template takes them: tool calls as text and tools in the system prompt
        when the template has no support for them."""
        out = []
        for message in messages:
            message = dict(message)
            if message.get("tool_calls") and not self.native_tool_calls:
                calls = message.pop("tool_calls")
                message["content"] = (message["content"] + "\n" if message["content"] else "") + _call_text(calls)
            out.append(message)
        if tools and not self.native_tools:
            listing = TOOLS_PREAMBLE + json.dumps([t["function"] for t in tools], ensure_ascii=False)
            if out and out[0]["role"] == "system":
                out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + listing}
            else:
                out.insert(0, {"role": "system", "content": listing})
            tools = None
        return out, tools

    def render(self, messages: list[dict], tools: list[dict] | None, *, add_generation_prompt: bool) -> str:
        return self._render_plain(*self._plain(messages, tools), add_generation_prompt)

    def _plain(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list[dict] | None]:
        """What render_jinja_template hands the template: plain JSON data, reasoning fields aliased."""
        return self._alias(self._plain_data(messages)), self._plain_data(tools)

    def _render_plain(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        return self._compiled.render(messages=messages, tools=tools, documents=None,
                                     add_generation_prompt=add_generation_prompt, **self._template_kwargs)

    def _render_prefix(self, messages, tools) -> str:
        try:
            return self._render_plain(messages, tools, True)
        except Exception:
            if messages:
                raise
            return ""  # some templates cannot render an empty conversation: nothing comes before it

    # ------------------------------------------------------------------ segments

    def segments(self, messages: list[dict], tools: list[dict] | None) -> tuple[list[tuple[str, bool]], bool]:
        """[(text, is_answer)] covering the rendered conversation, and whether every boundary was
        exact (False: the template renders a prefix differently from the full conversation, and the
        boundary fell back to the longest common prefix)."""
        parts = self._slotted_segments(messages, tools) if self._slotted else None
        if parts is not None:
            return parts, True
        self.exact_renders += 1
        return self._segments(*self._plain(messages, tools))

    def _slotted_segments(self, messages: list[dict], tools) -> list[tuple[str, bool]] | None:
        """The segments from the layout of the conversation's shape (see _SLOT_TEMPLATES); None
        where it does not apply: tools, or a role or content that is not a plain string."""
        if tools is not None:
            return None
        roles = []
        for message in messages:
            role, content = message.get("role"), message.get("content")
            if type(role) is not str or type(content) is not str:
                return None
            roles.append(role)
        shape = tuple(roles)
        if shape in self._layouts:
            layout = self._layouts[shape]
        else:
            layout = self._layout(shape)
            if len(self._layouts) < _MAX_LAYOUTS:
                self._layouts[shape] = layout
        if layout is None:
            return None
        fill = self._fill
        contents = [m["content"] if fill is None else fill(m["content"]) for m in messages]
        parts = []
        for pieces, is_answer in layout:
            text = "".join([piece if type(piece) is str else contents[piece] for piece in pieces])
            if text:  # the exact path keeps no empty segment either
                parts.append((text, is_answer))
        return parts

    def _layout(self, roles: tuple[str, ...]) -> list | None:
        """The exact segments of a skeleton conversation with these roles, each segment as literal
        text and content slots (message indices); None when a boundary is not exact there, or a
        segment boundary cuts a slot: such conversations take the exact path."""
        if any("\x00" in role or "\x01" in role for role in roles):  # would read as a slot
            return None
        skeleton = [{"role": role, "content": _SLOT.format(i)} for i, role in enumerate(roles)]
        try:
            parts, exact = self._segments(skeleton, None, probe=False)
        except Exception:  # the exact path raises it again, with the conversation's own text
            return None
        if not exact:
            return None
        layout = []
        for text, is_answer in parts:
            split = _SLOT_SPLIT.split(text)  # literal, slot, literal, slot, ..., literal
            if any("\x00" in literal or "\x01" in literal for literal in split[::2]):
                return None
            pieces = [piece if i % 2 == 0 else int(piece) for i, piece in enumerate(split)]
            layout.append(([piece for piece in pieces if piece != ""], is_answer))
        return layout

    def _segments(self, messages: list[dict], tools, *, probe: bool = True) -> tuple[list[tuple[str, bool]], bool]:
        """The exact path over plain data: renders of the conversation and of its prefixes."""
        full = self._render_plain(messages, tools, False)
        parts: list[tuple[str, bool]] = []
        cursor, exact = 0, True
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start, ok_start = _prefix_end(full, self._render_prefix(messages[:index], tools))
            end, ok_end = self._answer_end(full, messages, index, tools, probe)
            exact = exact and ok_start and ok_end
            start = max(start, cursor)
            end = max(end, start)
            if start > cursor:
                parts.append((full[cursor:start], False))
            if end > start:
                parts.append((full[start:end], True))
            cursor = end
        if cursor < len(full):
            parts.append((full[cursor:], False))
        return parts, exact

    def _answer_end(self, full: str, messages: list[dict], index: int, tools, probe: bool = True) -> tuple[int, bool]:
        """Where the assistant turn at `index` (with its closing text) ends in `full`."""
        if index + 1 == len(messages):  # the last message: its rendering is `full` itself
            return len(full), True
        end, exact = _prefix_end(full, self._render_plain(messages[: index + 1], tools, False))
        if exact or not probe:  # probe=False: a skeleton, whose probe would compare slots, not text
            return end, exact
        # Some templates render the latest answer differently from answers in the history (Qwen3
        # drops the <think> block of earlier turns). Render the turn as history instead: followed by
        # the next message with a sentinel for its text. The rendering matches `full` up to the
        # sentinel; the next turn's header that this leaves in the span lies after the end-of-turn
        # token and carries no label (see answer_span).
        probed = messages[: index + 1] + [{"role": messages[index + 1]["role"], "content": _SENTINEL}]
        try:
            rendered = self._render_plain(probed, tools, False)
        except Exception:
            return end, False
        reach = len(os.path.commonprefix([full, rendered]))
        if _SENTINEL in rendered and reach == rendered.index(_SENTINEL):
            return reach, True
        return end, False

    def answer_span(self, tokens: list[int]) -> tuple[int, int | None]:
        """How many leading tokens of an answer's piece train (through its last end-of-turn token:
        what follows, such as the next turn's header, carries no label), and that token's id (None:
        no end-of-turn token closes the answer, all of it trains)."""
        eot_ids = self.eot_ids
        for i in range(len(tokens) - 1, -1, -1):  # from the end: the closing token is the last or nearly so
            if tokens[i] in eot_ids:
                return i + 1, tokens[i]
        return len(tokens), None


def _prefix_end(full: str, prefix: str) -> tuple[int, bool]:
    if full.startswith(prefix):
        return len(prefix), True
    return len(os.path.commonprefix([full, prefix])), False


def tokenize_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without adding special tokens (templates render their own)."""
    if not texts:
        return []
    backend = _direct_backend(tokenizer)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    # verbose=False: long samples are expected here; truncation happens afterwards, and is reported.
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _direct_backend(tokenizer):
    """The Rust tokenizer, where calling it gives exactly what tokenizer(texts) gives; else None.

    tokenizer(texts) converts each encoding to Python lists with offsets and masks, a third of the
    tokenising time; encode_batch_fast skips the offsets. It is the same call when the class keeps
    the stock encoding path and the backend carries no truncation, padding or other special-token
    setting than the tokenizer's own (tokenizer(...) would reset them first)."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = getattr(tokenizer, "_tokenizer", None)
    if not (isinstance(tokenizer, TokenizersBackend) and hasattr(backend, "encode_batch_fast")
            and type(tokenizer)._encode_plus is TokenizersBackend._encode_plus
            and type(tokenizer).__call__ is PreTrainedTokenizerBase.__call__):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def prompt_ids(tokenizer, messages: list[dict], *, chat_template: str | None = None, tools: list[dict] | None = None) -> list[int]:
    """Token ids of `messages` rendered with the generation prompt: what the model continues from.

    `chat_template`: a template name, inline Jinja, or None for the tokenizer's (ChatML fallback),
    the same resolution as training, so chat and evaluation see what training saw.
    """
    resolved = template_for(tokenizer, chat_template)
    renderer = ChatRenderer(tokenizer, resolved.text)
    prepared, tools = renderer.prepare(messages, tools)
    text = renderer.render(prepared, tools, add_generation_prompt=True)
    return tokenize_many(tokenizer, [text])[0]
