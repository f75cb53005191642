"""`tunebench doctor PRESET` says what a run of it will cost: its steps and, after an earlier run of
the same preset here, how long it should take (the Submit dialog's numbers, for scripts)."""

from __future__ import annotations

import json

from jobs.store import Store
from presets import load_preset
from tui.cli import main


def test_doctor_preset_prints_the_steps_and_the_duration(demo_workspace, capsys):
    from engine.train import total_steps

    assert main(["-w", str(demo_workspace.root), "doctor", "demo", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["estimated_seconds"] is None  # no run of demo here yet
    preset = load_preset("demo", demo_workspace.root)
    assert payload["steps"] == total_steps(preset, 50)  # the demo data's 50 training samples

    store = Store(demo_workspace.store_db)
    run = store.create_run("train", "demo-try", "name: demo\n")  # a run named demo would be the target
    store.set_state(run.id, "running")
    store.set_state(run.id, "completed")
    store.update_run(run.id, step=100, active_seconds=25.0)  # 0.25 s/step
    main(["-w", str(demo_workspace.root), "doctor", "demo"])
    out = " ".join(capsys.readouterr().out.split())
    steps = payload["steps"]
    assert f"cost: {steps:,} steps · ≈" in out and "(demo-try: 0.25 s/step over 100 steps)" in out
    assert main(["-w", str(demo_workspace.root), "doctor", "demo", "--set", "training.max_steps=8", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert (payload["steps"], payload["estimated_seconds"]) == (8, 2.0)
