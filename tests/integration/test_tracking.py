"""training.report_to: experiment trackers receive the Trainer's logs beside tunebench's own store,
offline, with their files in the run folder; a tracker that is not installed is refused when the
preset is validated, naming the extra to install."""

from __future__ import annotations

import os

import pytest

from helpers.training import RecordingSink, tiny_preset


def test_tensorboard_event_files_hold_the_runs_loss(tiny_model_dir, demo_data_file, tmp_path, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "training.report_to=[tensorboard]")
    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed"
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # the trackers' settings last one run, not the process

    logdir = tmp_path / "run" / "tensorboard"
    assert list(logdir.glob("events.out.tfevents.*")), f"no event file in {logdir}"
    events = EventAccumulator(str(logdir))
    events.Reload()
    logged = {event.step: event.value for event in events.Scalars("train/loss")}
    assert logged.keys() == sink.series("loss").keys() == {1, 2, 3}
    for step, loss in sink.series("loss").items():
        assert logged[step] == pytest.approx(loss, rel=1e-5)
    # the result carries its model card (engine/card.py), with the run's figures
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "library_name: peft" in card and "| optimizer steps | 3 |" in card


def test_tracker_environment_points_offline_trackers_into_the_run_folder(tmp_path, tiny_model_dir, demo_data_file, monkeypatch):
    from engine.artifacts import RunArtifacts
    from engine.train import tracker_environment

    # Only the environment is exercised here: no tracker package is imported.
    monkeypatch.setattr("presets.extras.is_installed", lambda name: True)
    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "training.report_to=[tensorboard, wandb, mlflow, trackio]")
    for key in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "TRACKIO_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")  # a user's own choice wins over the offline default
    run_dir = tmp_path / "run"
    with tracker_environment(preset, RunArtifacts(run_dir)):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run_dir.resolve() / "tensorboard")
        assert os.environ["WANDB_DIR"] == str(run_dir.resolve())
        assert os.environ["WANDB_MODE"] == "online"
        assert os.environ["MLFLOW_TRACKING_URI"] == (run_dir.resolve() / "mlruns").as_uri()
        assert os.environ["TRACKIO_DIR"] == str(run_dir.resolve() / "trackio")
    assert "MLFLOW_TRACKING_URI" not in os.environ and os.environ["WANDB_MODE"] == "online"


def test_a_tracker_that_is_not_installed_is_refused_naming_the_extra(tiny_model_dir, demo_data_file, monkeypatch):
    from presets import PresetError

    monkeypatch.setattr("presets.extras.is_installed", lambda name: name != "wandb")
    with pytest.raises(PresetError) as caught:
        tiny_preset("lora", tiny_model_dir, demo_data_file, "training.report_to=[tensorboard, wandb]")
    text = str(caught.value)
    assert "training.report_to" in text and "wandb" in text and "pip install 'tunebench[tracking]'" in text


def test_report_to_defaults_to_none(tiny_model_dir, demo_data_file):
    assert tiny_preset("lora", tiny_model_dir, demo_data_file).training.report_to == []
    assert tiny_preset("lora", tiny_model_dir, demo_data_file, "training.report_to=none").training.report_to == []
