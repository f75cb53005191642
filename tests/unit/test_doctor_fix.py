"""From advice to action: findings carry a machine-readable change, and `fix_copy` saves a copy of
the run's preset with it applied (<preset>-fixN), against a real store and workspace."""

from __future__ import annotations

import math
import random

import yaml

from engine.doctor.rules import analyse
from jobs.store import Store
from presets import load_preset_text
from tui.fixes import change_text, fix_copy, fixable


def _climbing_loss():
    rng = random.Random(1)
    out = []
    for i in range(25):
        base = 2.5 * math.exp(-min(i, 10) / 25) + 0.8
        if i > 10:
            base *= math.exp(0.3 * (i - 10))
        out.append(((i + 1) * 10, base * math.exp(rng.gauss(0, 0.05))))
    return out


def test_divergence_suggests_the_lower_lr_and_warmup_its_advice_names():
    loss = _climbing_loss()
    run = {"loss": loss, "lr": [(s, 0.5) for s, _ in loss]}  # no warmup in the logged rates
    found = [f for f in analyse(run, precision="bf16", preset_lr=0.5) if f.rule == "divergence"][0]
    assert found.change == {"training.lr": 0.1, "training.warmup_ratio": 0.05}
    assert "0.5 → 0.1" in found.advice and "warmup_ratio: 0.05" in found.advice
    assert found.to_dict()["change"] == found.change  # stored with the finding


def test_spikes_suggest_harder_clipping_and_nan_under_fp16_suggests_bf16():
    rng = random.Random(3)
    loss = [((i + 1) * 10, (2.5 * math.exp(-i / 25) + 0.8) * math.exp(rng.gauss(0, 0.05))) for i in range(60)]
    for index in (20, 35, 50):
        loss[index] = (loss[index][0], loss[index][1] * 3.5)
    spikes = [f for f in analyse({"loss": loss}, precision="bf16", max_grad_norm=1.0, preset_lr=2e-4)
              if f.rule == "spikes"][0]
    assert spikes.change == {"training.max_grad_norm": 0.5, "training.lr": 1e-4}
    nan = analyse({"loss": [(10, 2.0), (20, float("nan"))]}, precision="fp16")[0]
    assert nan.rule == "nan" and nan.change == {"training.precision": "bf16"}


def _trained_run(workspace, preset_text: str, overrides=None) -> str:
    store = Store(workspace.store_db)
    frozen = yaml.safe_load(preset_text)
    run = store.create_run("train", frozen["name"], preset_text, info={"overrides": overrides} if overrides else {})
    return run.id


MINE = """\
# my own preset: this comment stays
name: mine
model:
  path: /models/tiny
method:
  name: lora
data:
  train_files: /data/x.json
  format: alpaca
training:
  lr: 5.0e-3  # too high, as it turns out
  epochs: 2
"""


def test_fix_copy_keeps_the_users_text_and_the_runs_overrides(workspace):
    (workspace.root / "presets").mkdir(exist_ok=True)
    (workspace.root / "presets" / "mine.yaml").write_text(MINE, encoding="utf-8")
    run_id = _trained_run(workspace, MINE, overrides=["training.epochs=3"])
    name, path = fix_copy(workspace, run_id, {"training.lr": 1e-3, "training.warmup_ratio": 0.05})
    assert (name, path.name) == ("mine-fix1", "mine-fix1.yaml")
    text = path.read_text()
    assert "# my own preset: this comment stays" in text
    preset = load_preset_text(text, name)
    assert (preset.name, preset.training.lr, preset.training.warmup_ratio, preset.training.epochs) == \
        ("mine-fix1", 1e-3, 0.05, 3)
    # A fix of the fix is the next number, not mine-fix1-fix1.
    assert fix_copy(workspace, run_id, {"training.lr": 1e-4})[0] == "mine-fix2"


def test_fix_copy_of_a_built_in_remembers_it_and_without_a_file_uses_the_frozen_preset(workspace):
    from presets.loader import builtin_dir, read_text

    demo = read_text(builtin_dir() / "demo.yaml")
    name, path = fix_copy(workspace, _trained_run(workspace, demo), {"training.lr": 1e-3})
    assert name == "demo-fix1"
    assert path.read_text().startswith("# based on built-in preset: demo")
    frozen = MINE.replace("name: mine", "name: gone")
    name, path = fix_copy(workspace, _trained_run(workspace, frozen), {"data.packing": True})
    assert name == "gone-fix1" and load_preset_text(path.read_text(), name).data.packing is True


def test_fixable_orders_by_severity_and_says_the_change():
    findings = [{"rule": "a", "severity": "info", "change": {"x.y": 1}}, {"rule": "b", "severity": "warning"},
                {"rule": "c", "severity": "error", "change": {"training.lr": 4e-05, "data.packing": True}}]
    assert [f["rule"] for f in fixable(findings)] == ["c", "a"]
    assert change_text(findings[2]["change"]) == "training.lr: 4.0e-05, data.packing: true"


def test_doctor_cli_shows_the_fix_and_saves_it(workspace, capsys):
    from tui.cli import main

    (workspace.root / "presets").mkdir(exist_ok=True)
    (workspace.root / "presets" / "mine.yaml").write_text(MINE, encoding="utf-8")
    store = Store(workspace.store_db)
    run_id = _trained_run(workspace, MINE)
    loss = _climbing_loss()
    store.add_metrics(run_id, [(s, "loss", v, 0.0) for s, v in loss] + [(s, "lr", 5e-3, 0.0) for s, _ in loss])
    main(["-w", str(workspace.root), "doctor", run_id])
    out = capsys.readouterr().out
    assert "fix: training.lr: 0.001, training.warmup_ratio: 0.05 (--fix)" in " ".join(out.replace("│", " ").split())
    assert not (workspace.root / "presets" / "mine-fix1.yaml").exists()  # showing is not doing
    main(["-w", str(workspace.root), "doctor", run_id, "--fix"])
    assert "tunebench submit mine-fix1" in capsys.readouterr().err
    preset = load_preset_text((workspace.root / "presets" / "mine-fix1.yaml").read_text(), "mine-fix1")
    assert (preset.training.lr, preset.training.warmup_ratio) == (0.001, 0.05)
    assert main(["-w", str(workspace.root), "doctor", run_id, "--fix", "9"]) == 2
    assert "--fix 9: this run has 1 finding(s) with a suggested fix" in capsys.readouterr().err
