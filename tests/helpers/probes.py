"""A probed run without training: fake_trained_run's checkpoints (10, 20, 30; best 20) with the
probes.jsonl engine/probes.py writes, answers fixed so the timeline's changes are known. Step 5's
checkpoint was pruned: its answers stay, its folder is gone."""

from __future__ import annotations

import json

from helpers.checkpoints import fake_trained_run

from jobs.workspace import Workspace

PROMPTS = ["What is the capital of France?", "What is the capital of Peru?", "Name a city in Japan."]
ANSWERS = {
    5: ["sent Austral b Reykjavik", "Denmar India awgal", "Tokyo Tokyo Tokyo"],
    10: ["The capital of Frankfurt is", "The capital of Peru is Lisbon.", "The capital of Japan is Tokyo."],
    20: ["The capital of France is Paris.", "The capital of Peru is Lima.", "The capital of Japan is Tokyo."],
    30: ["The capital of France is Paris.", "The capital of Peru is Lima.", "Tokyo."],
}
SECONDS = 0.125  # per answer: a save of three probes takes 0.375 s


def probe_lines(answers: dict[int, list[str]] = ANSWERS, prompts: list[str] = PROMPTS) -> list[str]:
    return [json.dumps({"step": step, "probe": index, "prompt": prompts[index], "answer": answer,
                        "tokens": len(answer.split()), "seconds": SECONDS, "time": 1_763_900_000.0 + step})
            for step, row in answers.items() for index, answer in enumerate(row)]


def fake_probed_run(ws: Workspace, **kwargs) -> str:
    run_id = fake_trained_run(ws, **kwargs)
    (ws.run_dir(run_id) / "probes.jsonl").write_text("\n".join(probe_lines()) + "\n")
    return run_id
