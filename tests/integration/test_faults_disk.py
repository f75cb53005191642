"""A full disk while training (issue 16): the run ends interrupted with a sentence naming the full
filesystem, no partial checkpoint is left, and it resumes from its last whole checkpoint.

Nothing is mounted: the fault is injected (a save that writes part of a file and then fails with
ENOSPC, or shutil.disk_usage reporting little free space) into real short runs of the tiny model.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from engine.artifacts import RunArtifacts, folder_bytes, human_bytes, mount_point
from engine.sink import Sink

MAX_STEPS = 4
# A checkpoint at every step, all of them kept, no evaluation: the saves are the only writes that count.
EVERY_STEP = ["training.save_steps=1", "training.keep_last=null", "training.eval_steps=1000",
              "training.logging_steps=1", f"training.max_steps={MAX_STEPS}"]


class Recorder(Sink):
    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.findings: list[dict] = []
        self.checkpoints: list[int] = []

    def event(self, level, text, step=None):
        self.events.append((level, text))

    def finding(self, finding):
        self.findings.append(finding)

    def checkpoint(self, step, path, metrics):
        self.checkpoints.append(step)


def demo_preset(demo_workspace, *overrides):
    from presets import load_preset, resolve_paths

    return resolve_paths(load_preset("demo", demo_workspace.root, [*EVERY_STEP, *overrides]), demo_workspace.root)


def train_demo(preset, run_dir: Path, resume_from=None):
    from engine.train import train

    sink = Recorder()
    return train(preset, run_dir, sink, resume_from=resume_from), sink


def fake_disk_usage(free_for):
    """shutil.disk_usage whose free bytes are `free_for(path)` (None: the real figure)."""
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        free = free_for(path)
        return usage if free is None else shutil._ntuple_diskusage(usage.total, usage.total - free, free)

    return disk_usage


def assert_whole(checkpoint: Path) -> None:
    import torch
    from safetensors.torch import load_file

    assert (checkpoint / "trainer_state.json").is_file()
    assert load_file(str(checkpoint / "adapter_model.safetensors"))
    assert torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]


def leftovers(artifacts: RunArtifacts) -> list[str]:
    """Folders under checkpoints/ that are not whole checkpoints (partial ones, unfinished deletions)."""
    whole = set(artifacts.checkpoints().values())
    return sorted(p.name for p in artifacts.checkpoints_dir.iterdir() if p not in whole)


def test_a_save_that_fills_the_disk_ends_the_run_interrupted_and_it_resumes(demo_workspace, tmp_path, monkeypatch):
    import torch

    failing_step = 3
    real_save = torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).parent.name == f"checkpoint-{failing_step}" \
                and Path(f).name == "optimizer.pt":
            Path(f).write_bytes(b"\x80\x02partial")  # what a write cut short leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    preset = demo_preset(demo_workspace)
    run_dir = tmp_path / "run"
    artifacts = RunArtifacts(run_dir)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_until_the_disk_fills)
        result, sink = train_demo(preset, run_dir)

    assert result.status == "interrupted" and result.stop_reason == "disk_full"
    assert result.final_dir is None and result.global_step == failing_step
    assert f"checkpoint-{failing_step}" in result.error and "partial one was removed" in result.error
    assert f"mounted at {mount_point(run_dir)}" in result.error and "free" in result.error
    last_size = human_bytes(folder_bytes(artifacts.checkpoint_dir(failing_step - 1)))
    assert f"takes {last_size} (checkpoint-{failing_step - 1}" in result.error
    assert "training.keep_last" in result.advice and f"checkpoint-{failing_step - 1}" in result.advice
    assert ("error", result.error) in sink.events
    # No partial checkpoint-3 (nor a half-deleted one); the earlier ones are whole and recorded.
    assert list(artifacts.checkpoints()) == [1, 2]
    assert leftovers(artifacts) == []
    for checkpoint in artifacts.checkpoints().values():
        assert_whole(checkpoint)
    assert sink.checkpoints == [1, 2]

    resumed, _ = train_demo(preset, run_dir, resume_from=artifacts.checkpoint_dir(failing_step - 1))
    assert resumed.status == "completed" and resumed.global_step == MAX_STEPS
    assert resumed.final_dir is not None and list(artifacts.checkpoints()) == list(range(1, MAX_STEPS + 1))


def test_a_checkpoint_that_would_not_fit_is_not_started(demo_workspace, tmp_path, monkeypatch):
    preset = demo_preset(demo_workspace)
    run_dir = tmp_path / "run"
    artifacts = RunArtifacts(run_dir)
    free = 4096  # far less than one checkpoint of the tiny model's adapter and optimizer state
    monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage(lambda path: free))
    result, sink = train_demo(preset, run_dir)

    assert result.status == "interrupted" and result.stop_reason == "disk_full"
    assert "checkpoint-2 would not fit" in result.error and "nothing was written" in result.error
    assert f"mounted at {mount_point(run_dir)}" in result.error and f"has {human_bytes(free)} free" in result.error
    assert f"takes {human_bytes(folder_bytes(artifacts.checkpoint_dir(1)))} (checkpoint-1" in result.error
    assert list(artifacts.checkpoints()) == [1] and leftovers(artifacts) == []
    assert not artifacts.checkpoint_dir(2).exists()


def test_the_doctor_warns_when_less_than_two_checkpoints_fit(demo_workspace, tmp_path, monkeypatch):
    preset = demo_preset(demo_workspace)
    run_dir = tmp_path / "run"
    artifacts = RunArtifacts(run_dir)

    def one_and_a_half_checkpoints(path):
        latest = artifacts.latest_checkpoint()
        return None if latest is None else int(1.5 * folder_bytes(latest))

    monkeypatch.setattr(shutil, "disk_usage", fake_disk_usage(one_and_a_half_checkpoints))
    result, sink = train_demo(preset, run_dir)

    assert result.status == "completed"  # the next checkpoint still fits each time: a warning, no stop
    warnings = [f for f in sink.findings if f["rule"] == "disk_space"]
    assert len(warnings) == 1, warnings  # once, not at every save
    [warning] = warnings
    assert warning["severity"] == "warning" and warning["step_start"] == 1 and not warning["stop"]
    assert "disk almost full" in warning["title"] and str(mount_point(run_dir)) in warning["title"]
    assert "training.keep_last" in warning["advice"] and "training.save_steps" in warning["advice"]
    assert warning["evidence"]["free"] < 2 * warning["evidence"]["checkpoint_bytes"]


@pytest.mark.parametrize("free_share, warned", [(2.5, False), (1.5, True)])
def test_the_disk_rule_counts_checkpoints(free_share, warned):
    from engine.artifacts import DiskSpace
    from engine.doctor.live import LiveDoctor

    size = 10 << 20
    space = DiskSpace(Path("/data/ws/runs/r/checkpoints"), Path("/data"), int(free_share * size), 1 << 40)
    doctor = LiveDoctor(None)
    assert bool(doctor.observe_disk(5, space, size)) == warned
    assert doctor.observe_disk(6, space, size) == []  # the same episode is not reported twice
