"""Shared fixtures: the tiny model, the demo data, temporary workspaces. Nothing downloads."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Tests never reach a hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tiers: unit/ (no engine process, no training run, no app: `make test-fast`), integration/ (real
# training, the engine subprocess, the CLI end to end) and ui/ (the Textual app through Pilot,
# snapshots, tmux). Shared helpers are the `helpers` package beside this file.
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A freshly made tiny Llama model + tokenizer (made once per test process)."""
    from engine.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def demo_data_file(tmp_path_factory) -> Path:
    from engine.demo_data import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo-data") / "demo_capitals.json")


@pytest.fixture
def workspace(tmp_path):
    """An empty workspace in a temporary directory."""
    from jobs.workspace import Workspace

    return Workspace(tmp_path / "ws").ensure()


@pytest.fixture
def demo_workspace(workspace, tiny_model_dir, demo_data_file):
    """A workspace laid out as `tunebench demo` lays it out: tiny model and demo data inside."""
    shutil.copytree(tiny_model_dir, workspace.models_dir / "tiny")
    workspace.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(demo_data_file, workspace.data_dir / "demo_capitals.json")
    return workspace


@pytest.fixture
def engine_cleanup(demo_workspace):
    """Whatever a test started, no engine outlives it."""
    from helpers.engine_process import kill_engine_group
    from jobs.engine_process import stop_engine

    yield demo_workspace
    try:
        stop_engine(demo_workspace, timeout=60)
    except Exception:
        pass
    kill_engine_group(demo_workspace)


@pytest.fixture
def ws(engine_cleanup):
    """A demo workspace whose engine is stopped when the test ends."""
    return engine_cleanup


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip("../shared/datasets is absent")
    return SHARED_DATASETS


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cli(workspace, tmp_path, monkeypatch, capsys):
    """`tunebench` in-process on `workspace`: cli(*args) -> (exit code, output with whitespace
    flattened). It runs from a folder inside tmp_path, so a path escaping the workspace (../../evil)
    still lands where a test that lists tmp_path sees it; a wide console keeps messages unwrapped."""
    from tui.cli import main

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLUMNS", "300")

    def run(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["-w", str(workspace.root), *args])
        captured = capsys.readouterr()
        return code, " ".join((captured.out + captured.err).split())

    return run
