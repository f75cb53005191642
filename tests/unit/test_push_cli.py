"""`tunebench push`: a result and its model card to the Hub; offline or out of reach it fails at
once with the reason (no test touches a real network)."""

from __future__ import annotations

import socket

import pytest
from helpers.checkpoints import fake_trained_run


@pytest.fixture
def hub_env(monkeypatch):
    from huggingface_hub import constants

    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    # conftest switches the Hub off for the whole session; huggingface_hub read that at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    return monkeypatch


def test_push_offline_fails_at_once_with_the_reason(cli, workspace, hub_env):
    fake_trained_run(workspace)
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    code, output = cli("push", "trained", "--repo", "me/model")
    assert code == 4
    assert "cannot push: the Hugging Face Hub is switched off here (HF_HUB_OFFLINE" in output


def test_push_to_an_unreachable_hub_names_the_endpoint(cli, workspace, hub_env):
    fake_trained_run(workspace)
    with socket.socket() as closed:  # a local port nothing listens on: refused at once, no real network
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    hub_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, output = cli("push", "trained", "--repo", "me/model")
    assert code == 4
    assert f"cannot reach the Hub at http://127.0.0.1:{port}" in output and "Traceback" not in output


def test_push_without_a_token_says_how_to_log_in(cli, workspace, hub_env):
    fake_trained_run(workspace)
    hub_env.delenv("HF_TOKEN")
    hub_env.setenv("HF_HOME", str(workspace.root / "no-hf-home"))  # no stored token either
    code, output = cli("push", "trained", "--repo", "me/model")
    assert code == 4 and "no Hugging Face token" in output and "hf auth login" in output


def test_push_uploads_the_exported_result_with_its_card(cli, workspace, hub_env, capsys):
    import huggingface_hub

    run_id = fake_trained_run(workspace)
    calls = {}

    class FakeApi:
        def __init__(self, endpoint=None):
            calls["endpoint"] = endpoint

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls["repo"] = (repo_id, private)
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, folder_path, repo_id, **kwargs):
            from pathlib import Path

            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text()

    hub_env.setattr(huggingface_hub, "HfApi", FakeApi)
    code, output = cli("push", "trained", "--repo", "me/model", "--private", "--checkpoint", "20")
    assert code == 0, output
    assert calls["repo"] == ("me/model", True)
    assert "README.md" in calls["files"] and "adapter_model.safetensors" in calls["files"]
    assert "optimizer.pt" not in calls["files"] and "trainer_state.json" not in calls["files"]
    assert "library_name: peft" in calls["card"] and f"of run {run_id}, checkpoint 20" in calls["card"]
    assert output.startswith("https://hub.example/me/model")  # stdout: the address alone (progress went to stderr)
