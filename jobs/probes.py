"""A run's probes timeline: each probe's answer at every checkpoint, with what changed since the one before.

The engine appends the answers to runs/<id>/probes.jsonl at each save (engine/probes.py); the
checkpoints' keep / best / on-disk state comes from jobs/checkpoints.py. The Probes screen and
`tunebench probes RUN` both read the timeline through `probe_timeline`.
"""

from __future__ import annotations

import difflib
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from jobs.store import Store
from jobs.workspace import Workspace

SAME, ADDED, REMOVED = "same", "added", "removed"
_WORDS = re.compile(r"\s*\S+|\s+")  # a word with the whitespace before it; trailing whitespace alone
REWRITE_BELOW = 0.5  # SequenceMatcher ratio under which a changed answer is shown as rewritten


def printable(text: str, *, one_line: bool = False) -> str:
    """An answer as a terminal may show it: control characters (a tiny model's babble holds some) as
    U+FFFD; newlines kept, or shown as ⏎ on one line."""
    shown = "".join(ch if ch.isprintable() or ch in "\n " else ("\ufffd" if ch != "\t" else " ") for ch in text)
    return shown.replace("\n", " ⏎ ") if one_line else shown


def word_diff(old: str | None, new: str) -> list[tuple[str, str]]:
    """`new` against `old` word by word: [(same | added | removed, text)], each word with the
    whitespace before it, so the same and added pieces joined give `new` back. An answer sharing
    less than half its words with `old` is a rewrite, all added; no `old` (the first save): all same."""
    if old is None or old == new:
        return [(SAME, new)] if new else []
    before, after = _WORDS.findall(old), _WORDS.findall(new)
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    if matcher.ratio() < REWRITE_BELOW:
        return [(ADDED, new)] if new else [(REMOVED, old)]
    pieces: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces.append((SAME, "".join(after[j1:j2])))
            continue
        if op in ("replace", "delete"):
            pieces.append((REMOVED, "".join(before[i1:i2])))
        if op in ("replace", "insert"):
            pieces.append((ADDED, "".join(after[j1:j2])))
    return [piece for piece in pieces if piece[1]]


@dataclass
class ProbeAnswer:
    probe: int
    prompt: str
    answer: str
    tokens: int | None
    seconds: float | None
    changed: bool  # differs from this probe's answer at the checkpoint before
    diff: list[tuple[str, str]]

    def to_json(self) -> dict:
        return {"probe": self.probe, "prompt": self.prompt, "answer": self.answer, "tokens": self.tokens,
                "seconds": self.seconds, "changed": self.changed, "diff": [list(piece) for piece in self.diff]}


@dataclass
class ProbeCheckpoint:
    step: int
    answers: list[ProbeAnswer | None]  # by probe index; None when this save has no answer to it
    path: Path | None = None
    on_disk: bool = False  # False once the keep policy (or the user) removed it: nothing to open
    keep: bool = False
    best: bool = False

    @property
    def seconds(self) -> float:
        """The time this save spent on its probes."""
        return sum(a.seconds or 0.0 for a in self.answers if a is not None)

    @property
    def changed(self) -> int:
        return sum(1 for a in self.answers if a is not None and a.changed)

    def to_json(self) -> dict:
        return {"step": self.step, "seconds": round(self.seconds, 4), "changed": self.changed, "on_disk": self.on_disk,
                "keep": self.keep, "best": self.best, "path": str(self.path) if self.path else None,
                "answers": [a.to_json() if a else None for a in self.answers]}


@dataclass
class ProbeTimeline:
    run_id: str
    name: str
    state: str
    prompts: list[str]
    max_new_tokens: int | None
    checkpoints: list[ProbeCheckpoint] = field(default_factory=list)
    note: str = ""  # why there is nothing to show, when there is not

    def cost_per_save(self) -> float | None:
        """Median seconds a save spent answering the probes."""
        times = [c.seconds for c in self.checkpoints if any(c.answers)]
        return statistics.median(times) if times else None

    def checkpoint(self, step: int) -> ProbeCheckpoint | None:
        return next((c for c in self.checkpoints if c.step == step), None)

    def to_json(self) -> dict:
        cost = self.cost_per_save()
        return {"run": self.run_id, "name": self.name, "state": self.state, "probes": self.prompts,
                "max_new_tokens": self.max_new_tokens, "probe_s_per_save": round(cost, 4) if cost is not None else None,
                "checkpoints": [c.to_json() for c in self.checkpoints]}


def read_probe_records(path: Path) -> list[dict]:
    """The records of a probes.jsonl; a line cut short by a crash (the last one) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and isinstance(record.get("probe"), int):
            records.append(record)
    return records


def _preset_probes(run) -> tuple[list[str], int | None]:
    """The run's probe prompts and answer length, from its frozen preset (for a run without answers yet)."""
    from presets import PresetError, load_preset_text
    from presets.probes import ProbeFileError, probe_prompts

    try:
        preset = load_preset_text(run.preset_yaml, f"run {run.id}")
        probes = getattr(preset, "probes", None)
    except PresetError:
        return [], None
    if probes is None:
        return [], None
    try:
        return probe_prompts(probes), probes.max_new_tokens
    except ProbeFileError:
        return list(probes.prompts), probes.max_new_tokens


def probe_timeline(store: Store, ws: Workspace, run_ref: str) -> ProbeTimeline:
    """Every save's answers of a run (id, prefix or name), oldest first; RunNotFound for no such run."""
    from engine.artifacts import RunArtifacts  # pure Python: the run folder layout
    from jobs.checkpoints import list_checkpoints

    run = store.resolve_run(run_ref)
    prompts, max_new_tokens = _preset_probes(run) if run.kind == "train" else ([], None)
    timeline = ProbeTimeline(run.id, run.name, run.state, prompts, max_new_tokens)
    if run.kind != "train":
        timeline.note = f"a {run.kind} job answers no probes; open its training run"
        return timeline
    records = read_probe_records(RunArtifacts(ws.run_dir(run.id)).probes_file)
    by_step: dict[int, dict[int, dict]] = {}
    for record in records:  # a probe answered twice at one step (a resumed save): the later answer wins
        by_step.setdefault(record["step"], {})[record["probe"]] = record
    count = max([len(prompts)] + [index + 1 for answers in by_step.values() for index in answers])
    prompts = prompts + [""] * (count - len(prompts))
    for answers in by_step.values():
        for index, record in answers.items():
            prompts[index] = str(record.get("prompt", prompts[index]))  # the words the engine asked
    timeline.prompts = prompts
    infos = {info.step: info for info in list_checkpoints(store, ws, run.id)}
    previous: list[str | None] = [None] * count
    for step in sorted(by_step):
        row = ProbeCheckpoint(step, [None] * count)
        for index, record in sorted(by_step[step].items()):
            answer = str(record.get("answer", ""))
            row.answers[index] = ProbeAnswer(
                index, prompts[index], answer, record.get("tokens"), record.get("seconds"),
                changed=previous[index] is not None and previous[index] != answer, diff=word_diff(previous[index], answer),
            )
            previous[index] = answer
        info = infos.get(step)
        if info is not None:
            row.path, row.on_disk, row.keep, row.best = info.path, info.on_disk, info.keep, info.best
        timeline.checkpoints.append(row)
    if not prompts:
        timeline.note = "this run has no probes: name some under probes.prompts (or probes.file) in its preset"
    elif not timeline.checkpoints:
        timeline.note = "no answers yet: the probes are answered at each checkpoint save"
    return timeline
