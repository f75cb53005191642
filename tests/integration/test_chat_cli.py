"""`tunebench chat` headless: resolving a run into base + result, one prompt, a probe set, errors."""

from __future__ import annotations

import json

import pytest
from helpers.chat import fake_run, make_adapter, trained_demo_run

from engine.demo_data import demo_rows
from tui.cli import main


@pytest.fixture(scope="module")
def random_lora(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("cli-lora") / "adapter", "lora", seed=5)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Exit code, stdout and stderr; Rich wraps at the terminal width, so compare on flattened text."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def flat(text: str) -> str:
    return " ".join(text.split())


def test_chat_resolves_a_run_and_prints_both_answers(demo_workspace, random_lora, capsys):
    from jobs.store import open_store

    run_id = fake_run(demo_workspace, random_lora, name="cli-demo")
    code, out, err = run_cli(capsys, "-w", str(demo_workspace.root), "chat", "--run", "cli-demo",
                             "--prompt", "What is the capital of Peru?", "--max-new-tokens", "6")
    assert code == 0, err
    assert "base vs fine-tuned" in flat(out) and "one copy of the base weights" in flat(out)
    assert "╭─ base" in out and "╭─ fine-tuned" in out and out.count("tok/s") == 2
    saved = open_store(demo_workspace).transcripts(run_id, "chat")
    assert len(saved) == 1 and saved[0].payload["turns"][0]["prompt"] == "What is the capital of Peru?"
    assert saved[0].payload["settings"]["max_new_tokens"] == 6
    assert len(list((demo_workspace.run_dir(run_id) / "chat").glob("chat-*.json"))) == 1


def test_checkpoints_and_json_output(demo_workspace, random_lora, capsys):
    run_id = fake_run(demo_workspace, random_lora, name="cli-ckpt")
    code, out, err = run_cli(capsys, "-w", str(demo_workspace.root), "chat", "--run", run_id[:12], "--checkpoint", "10",
                             "--compare", "5", "--prompt", "Hi", "--max-new-tokens", "4", "--json", "--no-save")
    assert code == 0, err
    records = json.loads(out)
    assert list(records[0]["answers"]) == ["checkpoint-5", "checkpoint-10"]
    assert not (demo_workspace.run_dir(run_id) / "chat").exists()  # --no-save


def test_a_run_without_a_final_result_uses_its_latest_checkpoint(demo_workspace, random_lora, capsys):
    fake_run(demo_workspace, random_lora, name="cli-running", final=False, state="running")
    code, out, err = run_cli(capsys, "-w", str(demo_workspace.root), "chat", "--run", "cli-running", "--prompt", "Hi",
                             "--max-new-tokens", "2", "--no-save")
    assert code == 0, err
    assert "latest checkpoint, step 10" in flat(out) and "╭─ checkpoint-10" in out


def test_probe_from_a_file_prints_the_table_and_exports(demo_workspace, random_lora, capsys, tmp_path):
    run_id = fake_run(demo_workspace, random_lora, name="cli-probe")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": r["instruction"], "output": r["output"]} for r in demo_rows()[:3]]))
    code, out, err = run_cli(capsys, "-w", str(demo_workspace.root), "chat", "--run", "cli-probe", "--prompts",
                             str(prompts), "--max-new-tokens", "6", "--export", str(tmp_path / "out"))
    assert code == 0, err
    assert "probe set (3 prompts" in flat(out) and "exact match" in flat(out)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "out.md").read_text().startswith("# Probe set (3 prompts")
    chat_dir = demo_workspace.run_dir(run_id) / "chat"
    assert [len(list(chat_dir.glob(f"probe-*.{ext}"))) for ext in ("json", "jsonl", "md")] == [1, 1, 1]


def test_base_and_adapter_without_a_run(tiny_model_dir, random_lora, capsys, workspace):
    code, out, err = run_cli(capsys, "-w", str(workspace.root), "chat", "--base", str(tiny_model_dir), "--adapter",
                             str(random_lora), "--prompt", "Hello", "--max-new-tokens", "3")
    assert code == 0, err
    assert "╭─ fine-tuned" in out


@pytest.mark.parametrize("argv, message", [
    (["--run", "nope", "--prompt", "x"], "no run matches 'nope'"),
    (["--run", "cli-err", "--checkpoint", "7", "--prompt", "x"], "no checkpoint at step 7; its checkpoints: 5, 10"),
    (["--run", "cli-err", "--compare", "last", "--prompt", "x"], "--compare 'last'"),
    (["--run", "cli-err"], "nothing to ask"),
    (["--prompt", "x"], "say what to compare"),
    (["--checkpoint", "5", "--prompt", "x", "--base", "b"], "--checkpoint and --compare pick checkpoints of a run"),
    (["--run", "cli-err", "--prompt", "x", "--temperature", "-1"], "temperature must be 0"),
    (["--run", "cli-err", "--prompts", "/no/such/file.txt"], "/no/such/file.txt: no such file"),
    (["--adapter", "/no/such/adapter", "--prompt", "x"], "--adapter /no/such/adapter: no such folder"),
])
def test_user_errors_are_one_clear_line(demo_workspace, random_lora, capsys, argv, message):
    fake_run(demo_workspace, random_lora, name="cli-err")
    code, out, err = run_cli(capsys, "-w", str(demo_workspace.root), "chat", *argv)
    assert code == 2
    assert message in flat(err) and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.xdist_group("chat-demo")  # one worker trains the demo run once for these
def test_headless_probe_of_a_trained_demo_run(tmp_path_factory, capsys):
    root, run_id = trained_demo_run(tmp_path_factory.getbasetemp() / "chat-demo-ws")
    code, out, err = run_cli(capsys, "-w", str(root), "chat", "--run", run_id, "--probe", "10", "--json",
                             "--max-new-tokens", "24")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["source"] == "validation split" and len(payload["rows"]) == 10
    base, tuned = payload["summary"]
    assert tuned["exact_match"] >= 0.9 and base["exact_match"] <= 0.1
