"""bench/gpu_check.py --smoke: the GPU check's own code on the tiny model on the CPU, so that the
prepared script is known to run before a GPU machine is lent to it (issue 18)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "tiny_engine_tokens_per_s": "tokens/s",
    "tiny_tflops": "TFLOP/s",
    "tiny_mfu": "%",
    "tiny_peak_memory": "GiB",
    "tiny_estimate_memory": "GiB",
    "tiny_peak_vs_estimate": "x",
    "tiny_bare_sdpa_padded_tokens_per_s": "tokens/s",
    "tiny_bare_padding_free_tokens_per_s": "tokens/s",
    "tiny_engine_vs_sdpa_padded": "x",
    "tiny_engine_vs_padding_free": "x",
    "tiny_packed_vs_unpacked_loss_diff": "nats",
}
LINE = re.compile(r"^(?P<name>[a-z0-9_]+) = (?P<value>\S+) (?P<unit>\S+)$")


@pytest.mark.slow
def test_gpu_check_smoke_prints_every_figure_last(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()[-len(FIGURES):]
    parsed = {}
    for line in lines:
        match = LINE.match(line)
        assert match, f"not `name = value unit`: {line!r}"
        parsed[match["name"]] = (float(match["value"]), match["unit"])
    assert {name: unit for name, (_, unit) in parsed.items()} == FIGURES
    assert all(math.isfinite(value) for value, _ in parsed.values()), parsed
    assert all(value > 0 for name, (value, _) in parsed.items() if name != "tiny_packed_vs_unpacked_loss_diff")
    # Packing changes no loss: the same samples packed and padded agree within float tolerance (fp32 on the CPU).
    assert parsed["tiny_packed_vs_unpacked_loss_diff"][0] < 1e-4
