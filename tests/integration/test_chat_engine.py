"""engine.chat: loading once, adapter switching, interleaved streaming, stop, multi-turn, probe sets.

Most tests use adapters with random weights (no training, seconds). The `slow` ones train the demo
through engine.train once per test process and check what a user checks: the fine-tune answers a
training question exactly, the base does not, and a probe set scores them apart.
"""

from __future__ import annotations

import gc
import json
import threading

import pytest

from helpers.chat import greedy_without_cache, make_adapter, make_full_model, trained_demo_run
from engine.demo_data import SYSTEM_PROMPT, demo_rows

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter", "lora", seed=1)


@pytest.fixture(scope="module")
def lora_session(tiny_model_dir, lora_dir):
    from engine.chat import ChatSession

    session = ChatSession.load(tiny_model_dir, lora_dir, system_prompt=SYSTEM_PROMPT)
    yield session
    session.close()


def _causal_lm_count() -> int:
    from transformers import LlamaForCausalLM

    return sum(1 for obj in gc.get_objects() if type(obj) is LlamaForCausalLM)




def _greedy(session, messages, n):
    from engine.chat import GenerationSettings

    return session.compare(messages, GenerationSettings(max_new_tokens=n))


# --------------------------------------------------------------------------- loading once


def test_lora_comparison_loads_the_base_weights_once(tiny_model_dir, lora_dir):
    from engine.chat import ChatSession, estimate_model_memory

    gc.collect()
    before = _causal_lm_count()
    session = ChatSession.load(tiny_model_dir, lora_dir)
    try:
        assert session.plan.shares_base and not session.plan.needs_confirmation
        assert _causal_lm_count() - before == 1  # one model object for both sides
        model = session._peft
        base_params = estimate_model_memory(tiny_model_dir).params
        storages = {}
        for name, param in model.named_parameters():
            storages[param.untyped_storage().data_ptr()] = (name, param.numel())
        adapter = ("lora_", "modules_to_save")  # the adapter's own weights, the lm_head copy it trains included
        base_numel = sum(n for name, n in storages.values() if not any(a in name for a in adapter))
        adapter_numel = sum(n for name, n in storages.values() if any(a in name for a in adapter))
        assert base_numel == base_params  # every base weight in memory exactly once
        assert 0 < adapter_numel < base_params
        assert [s.kind for s in session.sides] == ["base", "adapter"]
    finally:
        session.close()


def test_two_checkpoints_are_two_adapters_on_one_base(tiny_model_dir, lora_dir, tmp_path):
    from engine.chat import ChatSession
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    other = make_adapter(tiny_model_dir, tmp_path / "other", "lora", seed=2)
    gc.collect()
    before = _causal_lm_count()
    session = ChatSession.load(tiny_model_dir, other, compare_to=lora_dir)
    try:
        assert _causal_lm_count() - before == 1
        assert [s.label for s in session.sides] == ["adapter", "other"]
        ids = session.render(session._with_system(QUESTION))
        answers = _greedy(session, QUESTION, 12)
        for adapter, answer in ((lora_dir, answers[0]), (other, answers[1])):
            alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
            expected = greedy_without_cache(alone, ids, 12)
            assert answer.token_ids == [t for t in expected][: len(answer.token_ids)]
            del alone
        assert answers[0].token_ids != answers[1].token_ids
    finally:
        session.close()


def test_full_fine_tune_says_its_memory_before_loading_a_second_model(tiny_model_dir, tmp_path):
    from engine.chat import ChatSession, estimate_model_memory
    from engine.errors import EngineError

    full = make_full_model(tiny_model_dir, tmp_path / "full")
    plan = ChatSession.plan_load(tiny_model_dir, full)
    params = estimate_model_memory(full).params
    assert plan.needs_confirmation and not plan.shares_base
    assert plan.extra_model_bytes == params * 4  # fp32 on the CPU
    assert "second costs" in plan.describe()
    with pytest.raises(EngineError, match="second full model"):
        ChatSession.load(tiny_model_dir, full)
    gc.collect()
    before = _causal_lm_count()
    session = ChatSession.load(tiny_model_dir, full, allow_second_model=True)
    try:
        assert _causal_lm_count() - before == 2
        answers = _greedy(session, QUESTION, 8)
        assert answers[0].token_ids != answers[1].token_ids
    finally:
        session.close()


def test_a_qlora_run_loads_its_base_in_4_bit_once(tiny_model_dir, lora_dir):
    """The run's model section (quantization included) is how the base is loaded for chat."""
    from engine.chat import ChatSession, estimate_model_memory
    from presets.schema import ModelConfig, QuantizationConfig

    config = ModelConfig(path=str(tiny_model_dir), quantization=QuantizationConfig(mode="4bit"))
    plan = ChatSession.plan_load(tiny_model_dir, lora_dir, model_config=config)
    assert plan.models[0].bytes == estimate_model_memory(tiny_model_dir).params // 2 and "4bit" in plan.models[0].dtype
    gc.collect()
    before = _causal_lm_count()
    session = ChatSession.load(tiny_model_dir, lora_dir, model_config=config)
    try:
        assert _causal_lm_count() - before == 1
        kinds = {type(m).__name__ for m in session._peft.modules()}
        assert "Linear4bit" in kinds  # the LoRA layers wrap 4-bit base layers
        answers = _greedy(session, QUESTION, 6)
        assert answers[0].token_ids != answers[1].token_ids
    finally:
        session.close()


def test_memory_estimate_reads_safetensors_headers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from engine.chat import estimate_model_memory

    memory = estimate_model_memory(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert memory.params == sum(p.numel() for p in model.parameters())
    assert memory.bytes == memory.params * 4 and memory.dtype == "f32"
    assert estimate_model_memory(tiny_model_dir, "bf16").bytes == memory.params * 2


def test_bad_paths_are_clear_errors(tiny_model_dir, tmp_path):
    from engine.chat import ChatSession
    from engine.errors import EngineError

    with pytest.raises(EngineError, match="no such folder"):
        ChatSession.plan_load(tiny_model_dir, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EngineError, match="neither an adapter"):
        ChatSession.plan_load(tiny_model_dir, tmp_path / "empty")
    with pytest.raises(EngineError, match="base model .*: no such folder"):
        ChatSession.plan_load(tmp_path / "nowhere" / "base")


# --------------------------------------------------------------------------- interleaved generation is exact


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning"])
def test_interleaved_sides_match_greedy_decoding_alone(tiny_model_dir, tmp_path, kind):
    """Switching the adapter every token gives each side exactly the greedy answer of its model alone."""
    from engine.chat import ChatSession
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_model_dir, tmp_path / kind, kind, seed=3)
    session = ChatSession.load(tiny_model_dir, adapter, system_prompt=SYSTEM_PROMPT)
    try:
        ids = session.render(session._with_system(QUESTION))
        answers = _greedy(session, QUESTION, 16)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
        for answer, model in ((answers[0], base), (answers[1], tuned)):
            expected = greedy_without_cache(model, ids, 16)
            n = len(answer.token_ids)
            assert n > 0
            assert answer.token_ids == expected[:n]
            assert n == 16 or expected[n] in session.stop_token_ids  # stopped at EOS or the length
        assert answers[0].token_ids != answers[1].token_ids
    finally:
        session.close()


def test_streaming_delivers_both_sides_in_several_interleaved_updates(lora_session):
    from engine.chat import GenerationSettings

    events = list(lora_session.stream([QUESTION, QUESTION], GenerationSettings(max_new_tokens=24)))
    deltas = {0: [], 1: []}
    for event in events:
        if not event.done:
            deltas[event.side].append(event.delta)
    done = {e.side: e.answer for e in events if e.done}
    for side in (0, 1):
        assert len(deltas[side]) > 3  # token by token, not one block at the end
        assert "".join(deltas[side]) == done[side].text
        assert done[side].stats.tokens == len(done[side].token_ids)
        assert done[side].stats.ttft_s is not None and done[side].stats.tokens_per_s > 0
    sides_in_order = [e.side for e in events if not e.done]
    first_of_side1 = sides_in_order.index(1)
    assert 0 in sides_in_order[first_of_side1:]  # side 0 still streams after side 1 began: both at once


def test_stop_ends_a_long_generation_on_both_sides(lora_session):
    from engine.chat import GenerationSettings

    started = threading.Event()
    finished: dict[int, object] = {}
    counts = {0: 0, 1: 0}

    def consume():
        for event in lora_session.stream([QUESTION, QUESTION], GenerationSettings(max_new_tokens=5000)):
            if event.done:
                finished[event.side] = event.answer
            else:
                counts[event.side] += 1
                if counts[0] >= 5 and counts[1] >= 5:
                    started.set()

    worker = threading.Thread(target=consume)
    worker.start()
    assert started.wait(120)
    assert lora_session.stop(timeout=30)  # returns once the token loop has ended
    worker.join(30)
    assert not worker.is_alive()
    assert set(finished) == {0, 1}
    for answer in finished.values():
        assert answer.stats.finish == "stopped"
        assert answer.stats.tokens < 1000  # far fewer than the 5000 asked for
    assert not lora_session.generating


def test_a_stop_before_the_first_token_still_counts(lora_session):
    from engine.chat import GenerationSettings

    events = lora_session.stream([QUESTION, QUESTION], GenerationSettings(max_new_tokens=5000))
    lora_session.stop()
    answers = [e.answer for e in events if e.done]
    assert [a.stats.finish for a in answers] == ["stopped", "stopped"]
    assert all(a.stats.tokens == 0 for a in answers)


def test_same_settings_both_sides_and_sampling_is_seeded(lora_session):
    from engine.chat import GenerationSettings

    settings = GenerationSettings(max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.2, seed=7)
    first = [a.token_ids for a in lora_session.compare(QUESTION, settings)]
    again = [a.token_ids for a in lora_session.compare(QUESTION, settings)]
    assert first == again  # the same seed gives the same answers
    other_seed = GenerationSettings(max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=50, seed=8)
    assert [a.token_ids for a in lora_session.compare(QUESTION, other_seed)] != first


def test_bad_settings_are_refused_with_every_problem():
    from engine.chat import GenerationSettings
    from engine.errors import EngineError

    with pytest.raises(EngineError) as caught:
        GenerationSettings(max_new_tokens=0, temperature=-1, top_p=0, top_k=-2, repetition_penalty=0).check()
    for word in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty"):
        assert word in str(caught.value)


# --------------------------------------------------------------------------- multi-turn


def test_each_side_keeps_its_own_history_clear_and_regenerate(lora_session):
    from engine.chat import GenerationSettings

    settings = GenerationSettings(max_new_tokens=6)
    lora_session.clear()
    first = lora_session.answer("What is the capital of France?", settings)
    second = lora_session.answer("And of Spain?", settings)
    for side in (0, 1):
        history = lora_session.histories[side]
        assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
        assert history[1]["content"] == first[side].text and history[3]["content"] == second[side].text
    assert lora_session.histories[0][1] != lora_session.histories[1][1]
    # the second turn is rendered with each side's own first answer: the prompts differ
    ids = [lora_session.render(lora_session._with_system(h[:3])) for h in lora_session.histories]
    assert ids[0] != ids[1]

    again = {e.side: e.answer for e in lora_session.regenerate(settings) if e.done}
    assert [again[0].token_ids, again[1].token_ids] == [second[0].token_ids, second[1].token_ids]  # greedy
    assert len(lora_session.turns) == 2 and len(lora_session.histories[0]) == 4
    transcript = lora_session.transcript(settings, run_id="r-x")
    assert [t["prompt"] for t in transcript["turns"]] == ["What is the capital of France?", "And of Spain?"]
    json.dumps(transcript)
    lora_session.clear()
    assert lora_session.histories == [[], []] and lora_session.turns == []


def test_the_system_prompt_and_training_template_are_used(lora_session):
    from engine.data import prompt_ids

    ids = lora_session.render(lora_session._with_system(QUESTION))
    expected = prompt_ids(lora_session.tokenizer, [{"role": "system", "content": SYSTEM_PROMPT}] + QUESTION)
    assert ids == expected
    assert lora_session.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


# --------------------------------------------------------------------------- probe sets


def test_probe_set_from_a_file_scores_and_exports(lora_session, tmp_path):
    from engine.chat import GenerationSettings, load_prompt_file, run_probe

    rows = demo_rows()[:3]
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) for r in rows))
    examples = load_prompt_file(source)
    assert [e.reference for e in examples] == [r["output"] for r in rows]
    seen = []
    result = run_probe(lora_session, examples, GenerationSettings(max_new_tokens=8), source="prompts.jsonl",
                       on_row=lambda i, row: seen.append(i))
    assert seen == [0, 1, 2] and len(result.rows) == 3
    for row in result.rows:
        assert len(row.answers) == 2 and all(0 <= f <= 1 for f in row.f1) and all(e in (0.0, 1.0) for e in row.exact)
    summary = result.summary()
    assert [s["label"] for s in summary] == ["base", "fine-tuned"]

    lines = result.to_jsonl(tmp_path / "probe.jsonl").read_text().splitlines()
    assert len(lines) == 3
    record = json.loads(lines[0])
    assert record["prompt"] == rows[0]["instruction"] and record["reference"] == rows[0]["output"]
    assert set(record["base"]) == {"answer", "exact_match", "token_f1", "tokens"}
    markdown = result.to_markdown(tmp_path / "probe.md").read_text()
    assert markdown.count("\n| ") == 4 and rows[2]["instruction"] in markdown


def test_prompt_files_of_every_kind_and_their_errors(tmp_path):
    from engine.chat import load_prompt_file
    from engine.errors import EngineError

    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert [e.messages[-1]["content"] for e in load_prompt_file(tmp_path / "p.txt")] == ["first", "second"]
    (tmp_path / "p.json").write_text(json.dumps([
        {"prompt": "a", "reference": "b"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
        "plain",
    ]))
    examples = load_prompt_file(tmp_path / "p.json")
    assert [(e.messages[-1]["content"], e.reference) for e in examples] == [("a", "b"), ("q", "r"), ("plain", "")]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(EngineError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompt_file(tmp_path / "bad.jsonl")
    (tmp_path / "keys.json").write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(EngineError, match="row 1 has none of the keys"):
        load_prompt_file(tmp_path / "keys.json")


@pytest.mark.cuda
def test_on_the_gpu_both_sides_stream_from_one_bf16_base(tiny_model_dir, lora_dir):
    from engine.chat import ChatSession

    session = ChatSession.load(tiny_model_dir, lora_dir, device="cuda")
    try:
        params = list(session._peft.parameters())
        assert {p.device.type for p in params} == {"cuda"}
        assert session.plan.models[0].dtype in ("bf16", "fp16")
        answers = _greedy(session, QUESTION, 12)
        assert all(a.stats.tokens > 0 for a in answers) and answers[0].token_ids != answers[1].token_ids
    finally:
        session.close()


# --------------------------------------------------------------------------- with a trained demo run


@pytest.fixture(scope="module")
def demo_session(tmp_path_factory):
    from engine.artifacts import RunArtifacts
    from engine.chat import ChatSession

    root, run_id = trained_demo_run(tmp_path_factory.getbasetemp() / "chat-demo-ws")
    artifacts = RunArtifacts(root / "runs" / run_id)
    preset = artifacts.load_preset()
    session = ChatSession.load(preset.model.path, artifacts.final_dir, model_config=preset.model,
                               chat_template=preset.data.chat_template, system_prompt=preset.data.system_prompt)
    yield session, preset
    session.close()


@pytest.mark.slow
@pytest.mark.xdist_group("chat-demo")  # one worker trains the demo run once for these
def test_the_fine_tune_answers_a_training_question_and_the_base_does_not(demo_session):
    from engine.chat import GenerationSettings

    session, _ = demo_session
    session.clear()
    base, tuned = session.answer("What is the capital of France?", GenerationSettings(max_new_tokens=32))
    assert tuned.text == "The capital of France is Paris."
    assert tuned.stats.finish == "eos"
    assert base.text != tuned.text and "Paris" not in base.text


@pytest.mark.slow
@pytest.mark.xdist_group("chat-demo")  # one worker trains the demo run once for these
def test_probe_set_of_the_runs_validation_split_scores_the_sides_apart(demo_session):
    from engine.chat import GenerationSettings, run_probe
    from engine.data import build_datasets

    session, preset = demo_session
    examples = build_datasets(preset.data, session.tokenizer).eval_examples[:20]
    assert len(examples) == 20
    result = run_probe(session, examples, GenerationSettings(max_new_tokens=24), source="validation split")
    base, tuned = result.summary()
    assert tuned["exact_match"] >= 0.9
    assert base["exact_match"] <= 0.1
    assert tuned["token_f1"] > base["token_f1"]
