"""`tunebench doctor RUN|PRESET`: a stored run, a run folder, a preset, and neither."""

from __future__ import annotations

import json
import math

import pytest

from tui.cli import main


def diverging_rows(n=30):
    rows = []
    for i in range(n):
        step = (i + 1) * 5
        loss = 3.0 * math.exp(-i / 6) + 1.0 if i < 15 else (3.0 * math.exp(-15 / 6) + 1.0) * math.exp(0.25 * (i - 15))
        rows += [(step, "loss", loss, 0.0), (step, "lr", 0.05, 0.0), (step, "grad_norm", 0.8, 0.0)]
    return rows


@pytest.fixture
def stored_run(demo_workspace):
    from jobs.store import open_store
    from presets import dump_preset, load_preset

    store = open_store(demo_workspace)
    preset = load_preset("demo", demo_workspace.root)
    run = store.create_run("train", "too-hot", dump_preset(preset))
    store.add_metrics(run.id, diverging_rows())
    return run


def test_doctor_on_a_stored_run_prints_the_plot_and_the_findings(stored_run, demo_workspace, capsys):
    code = main(["-w", str(demo_workspace.root), "doctor", "too-hot"])
    out = capsys.readouterr().out
    assert f"run {stored_run.id} (too-hot)" in out
    assert "• loss" in out and "│" in out  # the plot
    assert "divergence" in out and "lower the learning rate" in out.lower()
    assert code == 1  # the divergence climbed above the start: an error


def test_doctor_json_on_a_stored_run_by_id_prefix(stored_run, demo_workspace, capsys):
    main(["-w", str(demo_workspace.root), "doctor", stored_run.id[:-2], "--json"])
    payload = json.loads(capsys.readouterr().out)
    rules = {f["rule"] for f in payload["findings"]}
    assert "divergence" in rules and payload["points"]["loss"] == 30


def test_doctor_on_a_run_folder(demo_workspace, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [json.dumps({"type": "run_started", "total_steps": 100, "precision": "fp16"})]
    for step in range(1, 8):
        lines.append(json.dumps({"type": "metrics", "step": step, "loss": 2.0 - step * 0.05, "grad_norm": 1.0}))
    lines.append(json.dumps({"type": "metrics", "step": 8, "loss": "nan", "grad_norm": "inf"}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code = main(["-w", str(demo_workspace.root), "doctor", str(folder)])
    out = capsys.readouterr().out
    assert code == 1 and "nan" in out and "step 8" in out
    assert "bf16" in out  # fp16 (from run_started) → the overflow advice


def test_doctor_on_a_preset_reports_data_and_memory(demo_workspace, capsys):
    code = main(["-w", str(demo_workspace.root), "doctor", "demo", "--gpu-free", "0.25",
                 "--set", "training.batch_size=512", "--set", "data.max_length=512", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["preset"] == "demo" and payload["data"] is None
    memory = payload["memory"]
    assert memory["fits"] is False and memory["suggestions"]
    # The data report's longest sample bounds the padded length, not max_length.
    assert memory["details"]["seq_len"] < 512
    assert any(f["rule"] == "memory" for f in payload["findings"])
    assert code == 0  # a memory warning is not an error


def test_doctor_on_a_preset_prints_tables(demo_workspace, capsys):
    code = main(["-w", str(demo_workspace.root), "doctor", "demo"])
    out = capsys.readouterr().out
    assert "peak GPU memory" in out and "cuda context" in out and "50 training / 6 validation" in out
    assert code == 0


def test_doctor_refuses_data_that_cannot_train(demo_workspace, capsys):
    code = main(["-w", str(demo_workspace.root), "doctor", "demo", "--set", "data.max_length=8"])
    out = capsys.readouterr().out
    assert code == 1 and "error" in out and "truncation" in out


def test_doctor_says_when_nothing_matches(demo_workspace, capsys):
    code = main(["-w", str(demo_workspace.root), "doctor", "no-such-thing"])
    err = capsys.readouterr().err
    assert code == 2 and "neither a run" in err and "tunebench ls" in err
    assert not demo_workspace.store_db.exists()  # looking did not create a store


def test_doctor_refuses_other_preset_kinds(demo_workspace, tmp_path, capsys):
    preset = tmp_path / "eval.yaml"
    preset.write_text("kind: eval\nname: e\nmodel:\n  path: x\n")
    code = main(["-w", str(demo_workspace.root), "doctor", str(preset)])
    assert code == 2 and "eval preset" in capsys.readouterr().err


def test_sparkline_marks_non_finite_values():
    from tui.commands.doctor_cmd import sparkline

    line = sparkline([3.0, 2.0, 1.0, math.nan])
    assert line[0] == "█" and line[2] == "▁" and line[3] == "×"
    assert len(sparkline([float(i) for i in range(500)], width=40)) == 40


def test_the_run_checkup_takes_plain_data():
    from engine.doctor.checkup import check_run

    memory = {"estimate_torch_bytes": 1, "measured_peak_reserved": 2, "ratio": 2.0}
    checkup = check_run([row[:3] for row in diverging_rows()], "not: a preset", total_steps=150,
                        stored_findings=[{"rule": "memory", "evidence": memory}])
    assert len(checkup.series["loss"]) == 30 and checkup.memory == memory
    assert "divergence" in {f.rule for f in checkup.findings} and checkup.has_errors


def test_a_preset_name_wins_over_a_run_that_starts_with_it(demo_workspace, capsys):
    from jobs.store import open_store
    from presets import dump_preset, load_preset

    assert main(["-w", str(demo_workspace.root), "presets", "copy", "demo", "mine"]) == 0
    store = open_store(demo_workspace)
    run = store.create_run("train", "mine-5ep", dump_preset(load_preset("demo", demo_workspace.root)))
    store.add_metrics(run.id, diverging_rows())
    capsys.readouterr()

    main(["-w", str(demo_workspace.root), "doctor", "mine", "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["preset"] == "mine"
    assert f"tunebench doctor {run.id}" in captured.err  # how to pick the run instead

    main(["-w", str(demo_workspace.root), "doctor", "mine-5", "--json"])  # a prefix no preset has: the run
    assert "divergence" in {f["rule"] for f in json.loads(capsys.readouterr().out)["findings"]}
