"""The quick start's main job, headless: tiny model made, demo run submitted through a real engine,
completed, and the fine-tuned answer to a training question exact while the base's is not; then
`--dpo`: demo-dpo queued behind it from its adapter, moving the held-out pairs from about chance to
at least 0.9."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def tunebench(workspace, *args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "tui.cli", "-w", str(workspace), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_demo_headless_learns_and_the_base_does_not_then_dpo_moves_the_pairs(tmp_path):
    workspace = tmp_path / "demo-ws"
    try:
        result = tunebench(workspace, "demo", "--headless", "--no-diverge", "--dpo", "--json")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        both = json.loads(result.stdout)  # with --json, stdout is the JSON alone (progress: stderr)
        comparison, shift = both["demo"], both["demo-dpo"]
        assert comparison["fine-tuned"]["exact"], comparison
        assert not comparison["base"]["exact"], comparison
        assert comparison["fine-tuned"]["text"] == comparison["reference"]
        assert shift["pairs"] == 56
        assert 0.3 <= shift["start"]["accuracy"] <= 0.7, shift  # the reverse question: about chance after SFT
        assert shift["result"]["accuracy"] >= 0.9, shift
        assert shift["result"]["margin"] > shift["start"]["margin"]
        # The workspace holds what the demo made, and a second run reuses it.
        assert (workspace / "models" / "tiny" / "config.json").is_file()
        listing = tunebench(workspace, "ls")
        assert "demo" in listing.stdout and "completed" in listing.stdout and "demo-dpo" in listing.stdout
    finally:
        tunebench(workspace, "engine", "stop", timeout=120)
