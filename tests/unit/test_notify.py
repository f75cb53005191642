"""tui/notify.py: which runs ended and which doctor findings are new, each said exactly once —
across polls and across restarts of the TUI — against a real run store."""

from __future__ import annotations

from jobs.store import Store
from tui.config import TuiConfig
from tui.notify import MAX_SEPARATE, SEEN_FILE, Notice, Notifier, desktop_sequence


def _store(workspace) -> Store:
    return Store(workspace.store_db)


def _ended(store: Store, run_id: str, state: str = "completed", **fields) -> None:
    store.create_run("train", run_id, "name: x\n", run_id=run_id)
    store.set_state(run_id, "running")
    store.set_state(run_id, state, **fields)


def _check(notifier: Notifier, store: Store) -> list[Notice]:
    return notifier.check(store.list_runs(), store.findings)


def test_first_start_is_quiet_then_each_ended_run_is_told_once(workspace):
    store = _store(workspace)
    _ended(store, "r-000000-000001-aaaa")
    notifier = Notifier(workspace)
    assert _check(notifier, store) == []  # what was there before tunebench first looked is no news
    assert (workspace.root / SEEN_FILE).exists()

    store.create_run("train", "second", "name: x\n", run_id="r-000000-000002-bbbb")
    store.set_state("r-000000-000002-bbbb", "running")
    assert _check(notifier, store) == []  # running is not an end
    store.set_state("r-000000-000002-bbbb", "failed", error="CUDA out of memory\ntraceback…")
    told = _check(notifier, store)
    assert [(n.title, n.body, n.severity) for n in told] == [
        ("tunebench: run failed", "second failed: CUDA out of memory", "error")]
    assert _check(notifier, store) == []  # the next poll says nothing again
    assert _check(notifier, store) == []


def test_restarts_remember_what_was_told_and_tell_what_ended_meanwhile(workspace):
    store = _store(workspace)
    Notifier(workspace).check(store.list_runs(), store.findings)  # first start
    _ended(store, "r-000000-000001-aaaa", "cancelled")
    first = Notifier(workspace)
    assert [n.body for n in _check(first, store)] == ["r-000000-000001-aaaa was cancelled"]

    # The TUI is closed; a run ends; the TUI starts again.
    _ended(store, "r-000000-000002-bbbb", "completed")
    restarted = Notifier(workspace)
    assert [n.body for n in _check(restarted, store)] == ["r-000000-000002-bbbb completed"]
    assert _check(Notifier(workspace), store) == []  # and a third start has nothing to say


def test_a_resumed_run_that_ends_again_is_told_again(workspace):
    store = _store(workspace)
    notifier = Notifier(workspace)
    _check(notifier, store)
    _ended(store, "r-000000-000001-aaaa", "interrupted")
    assert len(_check(notifier, store)) == 1
    store.set_state("r-000000-000001-aaaa", "queued")  # resume: a new attempt
    store.set_state("r-000000-000001-aaaa", "running")
    assert _check(notifier, store) == []
    store.set_state("r-000000-000001-aaaa", "completed")
    assert [n.title for n in _check(notifier, store)] == ["tunebench: run completed"]


def test_doctor_warnings_and_worse_are_told_once_per_severity(workspace):
    store = _store(workspace)
    store.create_run("train", "live", "name: x\n", run_id="r-000000-000001-aaaa")
    store.set_state("r-000000-000001-aaaa", "running")
    notifier = Notifier(workspace)
    _check(notifier, store)
    finding = {"rule": "divergence", "key": "climb", "severity": "info", "title": "the loss wobbles", "advice": "-"}
    store.add_finding("r-000000-000001-aaaa", finding)
    assert _check(notifier, store) == []  # info is not worth a bell
    store.add_finding("r-000000-000001-aaaa", {**finding, "severity": "warning", "title": "the loss trends up"})
    told = _check(notifier, store)
    assert [(n.title, n.body) for n in told] == [("tunebench: doctor warning", "live: the loss trends up")]
    store.add_finding("r-000000-000001-aaaa", {**finding, "severity": "warning", "title": "the loss trends up more"})
    assert _check(notifier, store) == []  # the same finding, updated: no news
    store.add_finding("r-000000-000001-aaaa", {**finding, "severity": "error", "title": "the loss diverges"})
    assert [n.severity for n in _check(notifier, store)] == ["error"]
    assert _check(Notifier(workspace), store) == []  # a restart does not repeat it


def test_many_news_at_once_are_one_summary(workspace):
    store = _store(workspace)
    _check(Notifier(workspace), store)
    for i in range(MAX_SEPARATE + 2):
        _ended(store, f"r-000000-00000{i}-aaaa")
    told = _check(Notifier(workspace), store)
    assert len(told) == 1
    assert told[0].title == f"tunebench: {MAX_SEPARATE + 2} news"
    assert told[0].body.endswith("and 2 more (Runs screen)")


def test_an_unreadable_seen_file_errs_on_telling(workspace):
    store = _store(workspace)
    (workspace.root / SEEN_FILE).write_text("{not json", encoding="utf-8")
    _ended(store, "r-000000-000001-aaaa")
    assert len(_check(Notifier(workspace), store)) == 1


def test_desktop_escapes():
    notice = Notice("k", "tunebench: run completed", "demo\x07 completed; step 3\x1b", "information")
    assert desktop_sequence(notice, "osc9") == "\x1b]9;tunebench: run completed: demo  completed; step 3 \x07"
    assert desktop_sequence(notice, "osc777") == \
        "\x1b]777;notify;tunebench: run completed;demo  completed; step 3 \x07"
    assert desktop_sequence(notice, "off") == ""
    wrapped = desktop_sequence(notice, "osc9", tmux=True)
    assert wrapped.startswith("\x1bPtmux;\x1b\x1b]9;") and wrapped.endswith("\x07\x1b\\")


def test_bell_and_desktop_settings(workspace, monkeypatch):
    monkeypatch.delenv("TUNEBENCH_BELL", raising=False)
    monkeypatch.delenv("TUNEBENCH_NOTIFY", raising=False)
    config = TuiConfig.from_env(str(workspace.root))
    assert (config.bell, config.desktop_notify) == (True, "osc9")
    (workspace.root / "tui.json").write_text('{"bell": false, "desktop_notify": "osc777"}', encoding="utf-8")
    config = TuiConfig.from_env(str(workspace.root))
    assert (config.bell, config.desktop_notify) == (False, "osc777")
    monkeypatch.setenv("TUNEBENCH_BELL", "1")
    monkeypatch.setenv("TUNEBENCH_NOTIFY", "off")
    config = TuiConfig.from_env(str(workspace.root))
    assert (config.bell, config.desktop_notify) == (True, "off")
