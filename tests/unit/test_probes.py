"""Probes without training: the probe file read at preset load (errors name file and line), the word
diff, the timeline read from a run folder and the store, and `tunebench probes`."""

from __future__ import annotations

import json

import pytest
from helpers.probes import ANSWERS, PROMPTS, fake_probed_run, probe_lines

from jobs.probes import ADDED, REMOVED, SAME, printable, probe_timeline, word_diff
from jobs.store import open_store
from presets import PresetError, load_preset, load_preset_text
from presets.probes import ProbeFileError, probe_prompts, read_probe_file
from tui.cli import main

PRESET = """\
name: probed
model:
  path: /models/tiny
data:
  train_files: /data/train.json
probes:
  prompts: ["Hello?"]
  file: {file}
"""


# --------------------------------------------------------------------------- the probe file


@pytest.mark.parametrize("name, text", [
    ("p.txt", "What is the capital of France?\n\n  Name a city.  \n"),
    ("p.json", '["What is the capital of France?", "Name a city."]'),
    ("p.jsonl", '"What is the capital of France?"\n\n"Name a city."\n'),
])
def test_probe_file_formats(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_probe_file(path) == ["What is the capital of France?", "Name a city."]


@pytest.mark.parametrize("name, content, expected", [
    ("p.jsonl", '"ok"\n{"prompt": "x"}\n', "p.jsonl:2: expected a JSON string (the prompt), got an object"),
    ("p.jsonl", '"ok"\n"ok"\nnot json\n', "p.jsonl:3: not valid JSON"),
    ("p.json", '[\n "ok",\n oops\n]', "p.json:3: not valid JSON"),
    ("p.json", '["ok", 3]', "p.json: item 2 of the list is a int"),
    ("p.json", '{"a": 1}', "p.json: expected a JSON list of strings, got an object"),
    ("p.txt", "\n  \n", "p.txt: holds no prompt"),
    ("p.csv", "a,b", "p.csv: a probe file is .txt"),
    ("p.txt", b"fine\n\xff bad\n", "p.txt:2: not UTF-8 text"),
])
def test_probe_file_errors_name_the_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ProbeFileError) as caught:
        read_probe_file(path)
    assert str(caught.value).startswith(f"{tmp_path}/") and expected in str(caught.value)


def test_prompts_come_before_the_file_prompts(tmp_path):
    path = tmp_path / "more.txt"
    path.write_text("Second?\n")
    preset = load_preset_text(PRESET.format(file=path))
    assert probe_prompts(preset.probes) == ["Hello?", "Second?"]


def test_a_bad_probe_file_is_reported_at_preset_load_with_its_key_line(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text('"fine"\n42\n')
    with pytest.raises(PresetError) as caught:
        load_preset_text(PRESET.format(file=path), "probed.yaml")
    [problem] = caught.value.problems
    assert (problem.path, problem.line) == ("probes.file", 8)
    assert f"{path}:2: expected a JSON string" in problem.message
    assert "line 8: probes.file:" in str(caught.value)


def test_a_missing_probe_file_is_refused_at_submit_not_at_load(workspace, tmp_path):
    from jobs.control import freeze_preset

    missing = tmp_path / "nowhere.txt"
    preset = load_preset("demo", workspace.root, [f"probes.file={missing}"])  # loads: the file may come later
    with pytest.raises(PresetError) as caught:
        freeze_preset(workspace, preset)
    assert any(p.path == "probes.file" and str(missing) in p.message for p in caught.value.problems)


def test_a_relative_probe_file_is_frozen_as_an_absolute_path(workspace, tmp_path, monkeypatch):
    from presets import resolve_paths

    (tmp_path / "probes.txt").write_text("Hi?\n")
    monkeypatch.chdir(tmp_path)
    preset = resolve_paths(load_preset("demo", workspace.root, ["probes.file=probes.txt"]), workspace.root)
    assert preset.probes.file == str(tmp_path / "probes.txt")


# --------------------------------------------------------------------------- the diff


def test_word_diff_marks_what_changed_and_gives_the_new_text_back():
    diff = word_diff("The capital of Frankfurt is", "The capital of France is Paris.")
    assert diff == [(SAME, "The capital of"), (REMOVED, " Frankfurt"), (ADDED, " France"), (SAME, " is"), (ADDED, " Paris.")]
    assert "".join(text for kind, text in diff if kind != REMOVED) == "The capital of France is Paris."
    assert word_diff(None, "first answer") == [(SAME, "first answer")]
    assert word_diff("same", "same") == [(SAME, "same")]
    assert word_diff("Tokyo Tokyo Tokyo", "The capital of Japan is Tokyo.") == [(ADDED, "The capital of Japan is Tokyo.")]
    assert word_diff("gone", "") == [(REMOVED, "gone")]


def test_printable_replaces_control_characters():
    assert printable("a\x0fb\tc\nd") == "a\ufffdb c\nd"
    assert printable("a\nb", one_line=True) == "a ⏎ b"


# --------------------------------------------------------------------------- the timeline


def test_timeline_joins_answers_with_the_checkpoints(workspace):
    run_id = fake_probed_run(workspace)
    store = open_store(workspace)
    timeline = probe_timeline(store, workspace, run_id)
    assert timeline.prompts == PROMPTS and timeline.note == ""
    assert [c.step for c in timeline.checkpoints] == [5, 10, 20, 30]
    pruned, ten, twenty, thirty = timeline.checkpoints
    assert not pruned.on_disk and ten.on_disk and twenty.best and not ten.best
    assert [a.answer for a in twenty.answers] == ANSWERS[20]
    assert [pruned.changed, ten.changed, twenty.changed, thirty.changed] == [0, 3, 2, 1]
    assert [a.changed for a in thirty.answers] == [False, False, True]
    assert twenty.answers[1].diff == [(SAME, "The capital of Peru is"), (REMOVED, " Lisbon."), (ADDED, " Lima.")]
    assert timeline.cost_per_save() == pytest.approx(0.375)


def test_timeline_follows_keep_and_skips_a_torn_last_line(workspace):
    from jobs.checkpoints import set_keep

    run_id = fake_probed_run(workspace)
    store = open_store(workspace)
    set_keep(store, workspace, run_id, 10, True)
    path = workspace.run_dir(run_id) / "probes.jsonl"
    resumed = json.loads(probe_lines({30: ["Paris, surely.", "Lima.", "Tokyo."]})[0])
    with path.open("a") as out:  # a resumed save answered step 30 again, then a crash cut a line
        out.write(json.dumps(resumed) + "\n" + '{"step": 40, "probe": 0, "answ')
    timeline = probe_timeline(store, workspace, run_id)
    assert [c.step for c in timeline.checkpoints] == [5, 10, 20, 30]
    assert timeline.checkpoint(10).keep
    assert timeline.checkpoint(30).answers[0].answer == "Paris, surely."  # the later answer wins


def test_a_run_without_probes_says_how_to_add_them(workspace):
    from helpers.checkpoints import fake_trained_run

    run_id = fake_trained_run(workspace)
    timeline = probe_timeline(open_store(workspace), workspace, run_id)
    assert timeline.checkpoints == [] and "probes.prompts" in timeline.note


def test_a_run_with_probes_but_no_save_yet(workspace):
    from helpers.checkpoints import train_preset_yaml

    store = open_store(workspace)
    yaml = train_preset_yaml(workspace).replace("probes:\n  prompts: []", "probes:\n  prompts: [\"Hi?\", \"Bye?\"]")
    assert "Hi?" in yaml
    run = store.create_run("train", "fresh", yaml)
    timeline = probe_timeline(store, workspace, run.id)
    assert timeline.prompts == ["Hi?", "Bye?"] and "no answers yet" in timeline.note


# --------------------------------------------------------------------------- the CLI


def test_probes_json(workspace, capsys):
    run_id = fake_probed_run(workspace)
    capsys.readouterr()
    assert main(["-w", str(workspace.root), "probes", "trained", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"run", "name", "state", "probes", "max_new_tokens", "probe_s_per_save", "checkpoints"}
    assert data["run"] == run_id and data["probes"] == PROMPTS and data["probe_s_per_save"] == 0.375
    step20 = data["checkpoints"][2]
    assert set(step20) == {"step", "seconds", "changed", "on_disk", "keep", "best", "path", "answers"}
    assert (step20["step"], step20["changed"], step20["best"]) == (20, 2, True)
    assert set(step20["answers"][0]) == {"probe", "prompt", "answer", "tokens", "seconds", "changed", "diff"}
    assert ["added", " France"] in step20["answers"][0]["diff"]


def test_probes_table_and_an_unknown_step(workspace, capsys):
    fake_probed_run(workspace)
    capsys.readouterr()
    assert main(["-w", str(workspace.root), "probes", "trained"]) == 0
    out = capsys.readouterr().out
    assert "probing adds 0.38 s per save (median)" in out
    assert "#1 What is the capital of France?" in out and "The capital of France is Paris." in out
    assert "5 (removed)" in out and "≠" in out
    assert "The capital of[- Frankfurt-]{+ France+} is{+ Paris.+}" in out  # piped: wdiff's marks, not colours
    assert main(["-w", str(workspace.root), "probes", "trained", "--step", "7"]) == 2
    err = capsys.readouterr().err
    assert "no probe answers at step 7" in err and "5, 10, 20, 30" in err
