"""Issue 17: of two processes preparing the same data on one cache (the ranks of a distributed run),
only one tokenises; the other waits on the build lock and loads the result."""

from __future__ import annotations

import json
import subprocess
import sys

PREPARE = """
import json, sys
from transformers import AutoTokenizer
from engine.data import build_datasets
from presets.schema import DataConfig
bundle = build_datasets(DataConfig(train_files=[sys.argv[2]], val_ratio=0.1), AutoTokenizer.from_pretrained(sys.argv[1]),
                        cache_dir=sys.argv[3])
print(json.dumps({"hit": bundle.cache_hit, "key": bundle.cache_key, "rows": len(bundle.train)}))
"""


def test_of_two_processes_preparing_the_same_data_only_one_tokenises(tiny_model_dir, shared_datasets, tmp_path):
    """The ranks of a distributed run all call build_datasets on the workspace cache: whichever
    takes the build lock first prepares; the other waits on the lock and loads its result."""
    from jobs.engine_process import python_module

    path = str(shared_datasets / "alpaca_en_sample.json")
    command, env = python_module("engine.data.cache")  # our packages on the path, whatever the cwd
    procs = [subprocess.Popen([sys.executable, "-P", "-c", PREPARE, str(tiny_model_dir), path, str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["hit"] for r in results) == [False, True]  # one prepared, one loaded
    assert results[0]["key"] == results[1]["key"] and results[0]["rows"] == results[1]["rows"] == 270


def test_a_streaming_run_trains_for_max_steps(tiny_model_dir, demo_data_file, tmp_path):
    from helpers.training import RecordingSink, tiny_preset

    from engine.train import train

    preset = tiny_preset("lora", tiny_model_dir, demo_data_file, "data.streaming=true", "data.val_ratio=0",
                         "training.max_steps=3", "training.batch_size=4")
    sink = RecordingSink()
    result = train(preset, tmp_path / "run", sink)
    assert result.status == "completed" and result.global_step == 3
