"""Probes through real training: the answers stored at each save are what chat with that saved
checkpoint says at temperature 0, the time they take reaches the sink, and the timeline reads them."""

from __future__ import annotations

import pytest
from helpers.training import RecordingSink, tiny_preset

PROMPTS = ["What is the capital of France?", "What is the capital of Peru?"]
MAX_NEW = 10


@pytest.fixture(scope="module")
def probed_run(tiny_model_dir, demo_data_file, tmp_path_factory):
    """A LoRA run saving at steps 2 and 4 with two probes and a system prompt, in a workspace with its store row."""
    from engine.train import train
    from jobs.store import open_store
    from jobs.workspace import Workspace
    from presets import dump_preset

    ws = Workspace(tmp_path_factory.mktemp("probes") / "ws").ensure()
    preset = tiny_preset(
        "lora", tiny_model_dir, demo_data_file, "training.max_steps=4", "training.save_steps=2", "training.lr=5e-3",
        "data.system_prompt=Answer in one sentence.", f"probes.prompts={PROMPTS}", f"probes.max_new_tokens={MAX_NEW}",
    )
    store = open_store(ws)
    run = store.create_run("train", "probed", dump_preset(preset))
    sink = RecordingSink()
    result = train(preset, ws.run_dir(run.id), sink)
    assert result.status == "completed"
    store.set_state(run.id, "running")
    store.set_state(run.id, "completed")
    return ws, store, run.id, preset, sink


def test_answers_equal_greedy_chat_with_the_saved_checkpoint(probed_run):
    from engine.chat import ChatSession, GenerationSettings
    from jobs.probes import read_probe_records

    ws, _, run_id, preset, _ = probed_run
    records = read_probe_records(ws.run_dir(run_id) / "probes.jsonl")
    assert sorted((r["step"], r["probe"]) for r in records) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    for step in (2, 4):
        # Loaded apart from training, as `chat` loads it: base + the saved adapter, the run's template and system prompt.
        session = ChatSession.load(preset.model.path, ws.run_dir(run_id) / "checkpoints" / f"checkpoint-{step}",
                                   chat_template=preset.data.chat_template, system_prompt=preset.data.system_prompt,
                                   model_config=preset.model)
        try:
            for record in (r for r in records if r["step"] == step):
                base, tuned = session.compare([{"role": "user", "content": record["prompt"]}],
                                              GenerationSettings(max_new_tokens=MAX_NEW))
                assert record["answer"] == tuned.text, f"step {step} probe {record['probe']}"
                assert record["tokens"] == tuned.stats.tokens <= MAX_NEW
        finally:
            session.close()


def test_probe_time_reaches_the_sink(probed_run):
    _, _, _, _, sink = probed_run
    assert set(sink.series("probe_s")) == {2, 4}
    assert all(seconds > 0 for seconds in sink.series("probe_s").values())
    texts = [text for _, text, _ in sink.of("event") if text.startswith("probes:")]
    assert len(texts) == 2 and "2 answer(s) at step 2 in" in texts[0]


def test_timeline_reads_the_engine_file(probed_run):
    from jobs.probes import probe_timeline

    ws, store, run_id, _, _ = probed_run
    timeline = probe_timeline(store, ws, "probed")
    assert timeline.prompts == PROMPTS and timeline.max_new_tokens == MAX_NEW
    assert [c.step for c in timeline.checkpoints] == [2, 4]
    assert all(c.on_disk for c in timeline.checkpoints)
    first, second = timeline.checkpoints
    assert first.changed == 0 and all(a.diff == [("same", a.answer)] or not a.answer for a in first.answers)
    for answer, before in zip(second.answers, first.answers):
        assert answer.changed == (answer.answer != before.answer)
    assert timeline.cost_per_save() > 0


def test_a_resumed_run_drops_the_answers_of_the_steps_it_trains_again(tmp_path):
    from types import SimpleNamespace

    from engine.probes import ProbeCallback
    from engine.sink import Sink
    from presets import load_preset

    path = tmp_path / "probes.jsonl"
    path.write_text("".join(f'{{"step": {s}, "probe": 0, "answer": "a{s}"}}\n' for s in (10, 20, 30)) + '{"step": 40, "pro')
    callback = ProbeCallback(load_preset("demo"), tmp_path, Sink(), tokenizer=None, prompts=["Hi?"])
    callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, global_step=20), None)
    assert [line[:12] for line in path.read_text().splitlines()] == ['{"step": 10,', '{"step": 20,']


def test_a_save_that_a_cancel_asks_for_is_not_probed(tiny_model_dir, demo_data_file, tmp_path):
    from engine.train import train
    from jobs.probes import read_probe_records

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "training.max_steps=8", "training.save_steps=2",
                         f"probes.prompts={PROMPTS[:1]}", "probes.max_new_tokens=4")
    sink = RecordingSink(stop_at=3)  # asks to stop once step 3 is logged: the run stops and saves at step 4
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "cancelled" and result.global_step == 4
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4").is_dir()
    assert {r["step"] for r in read_probe_records(tmp_path / "run" / "probes.jsonl")} == {2}
    assert any("not answered at step 4" in text for _, text, _ in sink.of("event"))
