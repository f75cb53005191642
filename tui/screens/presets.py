"""Presets: pick one, edit its YAML (validated as you type), or use the form; save, copy, rename,
delete, diff, submit.

The YAML text is the one source of truth. The form writes single values into it as TextArea edits
(tui.preset_yaml.plan_edit: comments, order and undo survive), and only when the user changes a
field. Every change of the text is validated in a worker; a result fills the problem list, the
gutter marks and the form only if the text is still the one it was computed from (a generation
counter), so a late result never writes into what the user has typed since.

Below NARROW_WIDTH columns the editor and the form take turns beside the list (ctrl+f switches);
ctrl+b hides the list at any width.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import OptionList, TextArea
from textual.widgets.option_list import Option

from tui.format import user_message
from tui.preset_yaml import EditError, copy_of, origin_of, parse_field, plan_edit
from tui.screens.modals import ConfirmScreen, DiffScreen, NameScreen, SubmitRequest, SubmitScreen
from tui.widgets.preset_form import PresetForm
from tui.widgets.status import KeyFooter, StatusLine
from tui.widgets.yaml_editor import YamlEditor


@dataclass(frozen=True)
class PresetEntry:
    name: str
    origin: str  # "built-in" | "workspace"
    path: Path

    @property
    def key(self) -> str:
        return f"{self.origin}:{self.name}"


@dataclass(frozen=True)
class Validation:
    text: str
    data: dict | None  # the parsed YAML, when it parses
    problems: list  # presets.Problem
    kind: str | None  # the preset kind when valid


NARROW_WIDTH = 110  # below it, editor and form take turns (at 80 columns both would be unusably thin)


class PresetsScreen(Screen):
    BINDINGS = [
        # The footer shows them in this order, and at 80 columns only the first few: most used first.
        Binding("ctrl+s", "save", "Save"),
        # Narrow terminals show the editor or the form, not both squeezed: this key switches (ctrl+f:
        # a key neither TextArea nor Input takes; priority so it acts from inside either).
        Binding("ctrl+f", "switch_pane", "Form/YAML", priority=True),
        Binding("ctrl+r", "submit", "Submit"),
        Binding("ctrl+g", "diff", "Diff"),
        Binding("ctrl+n", "save_as", "Save as"),
        Binding("ctrl+t", "duplicate", "Duplicate"),
        Binding("ctrl+b", "toggle_list", "List", priority=True),
        # Printable keys: only the preset list takes them (check_action), the editor and fields type them.
        Binding("d,delete", "delete_preset", "Delete"),
        Binding("r,f2", "rename_preset", "Rename"),
        Binding("escape", "focus_list", "List", show=False),
    ]

    class Listed(Message):
        def __init__(self, entries: list[PresetEntry], select: str | None):
            super().__init__()
            self.entries = entries
            self.select = select

    class Loaded(Message):
        def __init__(self, entry: PresetEntry, text: str):
            super().__init__()
            self.entry = entry
            self.text = text

    class Validated(Message):
        def __init__(self, validation: Validation, generation: int):
            super().__init__()
            self.validation = validation
            self.generation = generation  # of the editor text it was computed from

    def __init__(self, preset: str | None = None):
        """`preset`: a workspace preset to open first (a copy made by the doctor's fix key)."""
        super().__init__()
        self.open_first = f"workspace:{preset}" if preset else None
        self.entries: list[PresetEntry] = []
        self.current: PresetEntry | None = None
        self.saved_text = ""
        self.validation: Validation | None = None
        self.generation = 0  # counts changes of the editor text; a validation applies to its own only

    def compose(self) -> ComposeResult:
        yield StatusLine("Presets")
        with Horizontal(id="presets-body"):
            with Vertical(id="preset-list-pane"):
                yield OptionList(id="preset-names")
            with Vertical(id="editor-pane"):
                yield YamlEditor(id="editor")
                yield OptionList(id="problems")
            yield PresetForm()
        yield KeyFooter()

    def on_mount(self) -> None:
        self.query_one("#preset-names", OptionList).border_title = "presets"
        editor = self.query_one(YamlEditor)
        editor.cursor_blink = self.app.config.cursor_blink
        editor.border_title = "YAML"
        self.query_one("#problems", OptionList).border_title = "problems"
        self.list_presets(self.open_first)
        self.query_one("#preset-names", OptionList).focus()

    def on_resize(self) -> None:
        narrow = self.size.width < NARROW_WIDTH
        if narrow != self.has_class("narrow"):
            self.set_class(narrow, "narrow")
            self.refresh_bindings()  # the switch key is offered only while narrow
            self._keep_focus_shown()

    # ----------------------------------------------------------------- layout

    @property
    def editor_shown(self) -> bool:
        return not (self.has_class("narrow") and self.has_class("show-form"))

    def action_switch_pane(self) -> None:
        """Narrow: show the form in the editor's place, or the editor back; the focus goes along."""
        self.toggle_class("show-form")
        self.focus_editing()

    def action_toggle_list(self) -> None:
        self.toggle_class("list-hidden")
        self._keep_focus_shown()

    def _keep_focus_shown(self) -> None:
        """A pane that was hidden must not keep the focus (keys would go to what cannot be seen)."""
        focused = self.app.focused
        if focused is not None and not all(node.display for node in focused.ancestors_with_self
                                           if isinstance(node, Widget) and node is not self):
            self.focus_editing()

    def focus_editing(self) -> None:
        """Focus the editor, or the form where it stands in the editor's place."""
        if self.editor_shown:
            self.query_one(YamlEditor).focus()
        else:
            self.query_one(PresetForm).focus_first()

    # ----------------------------------------------------------------- list and load

    @work(thread=True, group="presets-io", exit_on_error=False)
    def list_presets(self, select: str | None = None) -> None:
        try:
            entries = [PresetEntry(*e) for e in self.app.backend.preset_entries()]
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot list presets", severity="error")
            return
        self.post_message(self.Listed(entries, select))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        self.entries = message.entries
        names = self.query_one("#preset-names", OptionList)
        names.clear_options()
        for origin in ("built-in", "workspace"):
            group = [e for e in self.entries if e.origin == origin]
            names.add_option(Option(Content.from_markup(f"[b $text-muted]{origin}[/]"), disabled=True))
            if not group and origin == "workspace":
                names.add_option(Option(Content.from_markup("[$text-muted]none yet (^t)[/]"), disabled=True))
            for entry in group:
                names.add_option(Option(entry.name, id=entry.key))
        wanted = message.select or (self.current.key if self.current else None)
        keys = [e.key for e in self.entries]
        # The user's own presets first: they are what is being worked on.
        fallback = next((e.key for e in self.entries if e.origin == "workspace"), keys[0] if keys else None)
        chosen = wanted if wanted in keys else fallback
        if chosen is None:
            return
        names.highlighted = names.get_option_index(chosen)
        if self.current is None or chosen != self.current.key:
            self.load(self.entries[keys.index(chosen)])

    @on(OptionList.OptionSelected, "#preset-names")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        entry = next((e for e in self.entries if e.key == event.option.id), None)
        if entry is None or (self.current and entry.key == self.current.key):
            self.focus_editing()
            return
        if self.modified:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.load(entry)
            self.app.push_screen(ConfirmScreen(f"Discard the unsaved changes to {self.current.name}?", "Discard"),
                                 answered)
            return
        self.load(entry)

    def load(self, entry: PresetEntry) -> None:
        self._read_preset(entry)

    @work(thread=True, group="presets-io", exit_on_error=False)
    def _read_preset(self, entry: PresetEntry) -> None:
        try:
            text = self.app.backend.read_text(entry.path)
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title=f"cannot open {entry.name}", severity="error")
            return
        self.post_message(self.Loaded(entry, text))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.current = message.entry
        self.saved_text = message.text
        editor = self.query_one(YamlEditor)
        editor.load_text(message.text)
        editor.border_title = f"{message.entry.name}.yaml ({message.entry.origin})"
        self._update_title()
        self._check(message.text)

    @property
    def modified(self) -> bool:
        return self.current is not None and self.query_one(YamlEditor).text != self.saved_text

    @property
    def unsaved_name(self) -> str:
        return f"preset {self.current.name}" if self.current else "the preset"

    def discard_changes(self) -> None:
        """The user chose to leave without saving (the app asks before it calls this)."""
        self.saved_text = self.query_one(YamlEditor).text

    def _update_title(self) -> None:
        if self.current is None:
            return
        mark = " ●" if self.modified else ""
        self.query_one(StatusLine).set_title(f"Presets › {self.current.name}{mark}")

    # ----------------------------------------------------------------- validation

    @on(TextArea.Changed, "#editor")
    def _edited(self, event: TextArea.Changed) -> None:
        self._update_title()
        self._check(event.text_area.text)

    def _check(self, text: str) -> None:
        self.generation += 1
        self.validate(text, self.generation)

    @work(thread=True, exclusive=True, group="validate", exit_on_error=False)
    def validate(self, text: str, generation: int) -> None:
        source = self.current.name if self.current else "<editor>"
        self.post_message(self.Validated(check_text(text, source), generation))

    @on(Validated)
    def _validated(self, message: Validated) -> None:
        validation = message.validation
        editor = self.query_one(YamlEditor)
        if message.generation != self.generation or validation.text != editor.text:
            return  # the text changed since: its own validation is on the way
        self.validation = validation
        rows: dict[int, str] = {}
        for problem in validation.problems:
            if problem.line:
                rows.setdefault(problem.line - 1, f"{problem.path}: {problem.message}" if problem.path else problem.message)
        editor.set_problems(rows)
        problems = self.query_one("#problems", OptionList)
        problems.clear_options()
        problems.set_class(not validation.problems, "ok")
        if validation.problems:
            problems.border_title = f"{len(validation.problems)} problem(s) — enter jumps to the line"
            for index, problem in enumerate(validation.problems):
                where = f"line {problem.line:>3}  " if problem.line else "          "
                key = f"{problem.path}: " if problem.path else ""
                problems.add_option(Option(Content.from_markup("[$error]$where[/]$key$message", where=where, key=key,
                                                               message=problem.message), id=str(index)))
        else:
            problems.border_title = "problems"
            problems.add_option(Option(Content.from_markup(f"[$success]✓ a valid {validation.kind} preset[/]"),
                                       disabled=True))
        paths = {tuple(p.path.split(".")) for p in validation.problems if p.path}
        self.query_one(PresetForm).show(validation.data, paths)

    @on(OptionList.OptionSelected, "#problems")
    def _jump(self, event: OptionList.OptionSelected) -> None:
        if self.validation is None or event.option.id is None:
            return
        problem = self.validation.problems[int(event.option.id)]
        editor = self.query_one(YamlEditor)
        if problem.line:
            row = problem.line - 1
            line = editor.document.get_line(row) if row < editor.document.line_count else ""
            editor.move_cursor((row, len(line) - len(line.lstrip())), center=True)
        editor.focus()

    # ----------------------------------------------------------------- form → YAML

    @on(PresetForm.FieldChanged)
    def _form_changed(self, message: PresetForm.FieldChanged) -> None:
        """A user edit of a form field (the form posts nothing when it is refilled from the text)."""
        editor = self.query_one(YamlEditor)
        try:
            edit = plan_edit(editor.text, message.field.path, parse_field(message.field, message.text))
        except EditError as exc:
            self.notify(str(exc), title=f"cannot set {message.field.label}", severity="warning", timeout=4)
            return
        editor.replace(edit.insert, edit.start, edit.end)

    # ----------------------------------------------------------------- actions

    def action_focus_list(self) -> None:
        self.remove_class("list-hidden")
        self.query_one("#preset-names", OptionList).focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("delete_preset", "rename_preset"):  # hidden, and the keys left alone, off the list
            return self.query_one("#preset-names", OptionList).has_focus
        if action == "switch_pane":
            return self.has_class("narrow")
        return True

    def _highlighted(self) -> PresetEntry | None:
        names = self.query_one("#preset-names", OptionList)
        if names.highlighted is None:
            return None
        key = names.get_option_at_index(names.highlighted).id
        return next((e for e in self.entries if e.key == key), None)

    def _builtin_refused(self, entry: PresetEntry, verb: str) -> bool:
        if entry.origin == "built-in":
            self.notify(f"{entry.name} is a built-in preset and cannot be {verb}; ^t copies it into the workspace.",
                        severity="warning", timeout=5)
            return True
        return False

    def action_delete_preset(self) -> None:
        entry = self._highlighted()
        if entry is None or self._builtin_refused(entry, "deleted"):
            return
        lost = " and your unsaved changes" if self.current == entry and self.modified else ""
        question = Content.from_markup("Delete workspace preset [b]$name[/]$lost?\n$path",
                                       name=entry.name, lost=lost, path=str(entry.path))

        def answered(yes: bool | None) -> None:
            if yes:
                self.app.call_blocking(f"delete {entry.name}", self.app.backend.delete_preset, entry.name,
                                       then=lambda path: self._deleted(entry, path))

        self.app.push_screen(ConfirmScreen(question, "Delete"), answered)

    def _deleted(self, entry: PresetEntry, path: Path) -> None:
        if self.current == entry:
            self.current = None  # the list opens another preset in the editor
            self.saved_text = ""
        self.notify(f"Deleted {path}.", timeout=3)
        self.list_presets()

    def action_rename_preset(self) -> None:
        entry = self._highlighted()
        if entry is None or self._builtin_refused(entry, "renamed"):
            return
        if self.current == entry and self.modified:
            self.notify(f"Save (^s) or discard the changes to {entry.name} before renaming it.", severity="warning",
                        timeout=5)
            return
        taken = {e.name for e in self.entries}  # a workspace preset named like a built-in would hide it

        def named(name: str | None) -> None:
            if name:
                self.app.call_blocking(f"rename {entry.name}", self.app.backend.rename_preset, entry.name, name,
                                       then=lambda path: self._renamed(entry, name, path))

        self.app.push_screen(NameScreen(f"Rename {entry.name} to:", entry.name, taken - {entry.name}), named)

    def _renamed(self, entry: PresetEntry, name: str, path: Path) -> None:
        select = None
        if self.current == entry:
            self.current = None  # reload it under its new name
            select = f"workspace:{name}"
        self.notify(f"Renamed {entry.name} to {name}.", timeout=3)
        self.list_presets(select)

    def action_save(self) -> None:
        if self.current is None:
            return
        if self.current.origin == "built-in":
            self.notify("Built-in presets are read-only: saving a copy in the workspace.", timeout=3)
            self.action_save_as()
            return
        self._save(self.current.name, self.query_one(YamlEditor).text)

    def _taken(self) -> set[str]:
        return {e.name for e in self.entries if e.origin == "workspace"}

    def action_save_as(self) -> None:
        if self.current is None:
            return
        text = self.query_one(YamlEditor).text
        origin = self.current.name if self.current.origin == "built-in" else origin_of(text)
        suggestion = f"{self.current.name}-copy" if self.current.origin == "built-in" else ""

        def named(name: str | None) -> None:
            if name:
                self._save_copy(text, name, origin)

        self.app.push_screen(NameScreen("Save as workspace preset:", suggestion, self._taken()), named)

    def action_duplicate(self) -> None:
        """Copy the highlighted preset as it is on disk (not the editor's changes) into the workspace."""
        entry = self._highlighted()
        if entry is None:
            return

        def named(name: str | None) -> None:
            if name:
                self.discard_changes()  # asked below: the copy replaces the editor's text
                self._duplicate(entry, name)

        def ask_name() -> None:
            self.app.push_screen(NameScreen(f"Duplicate {entry.name} as:", f"{entry.name}-copy", self._taken()), named)

        if not self.modified:
            ask_name()
            return

        # The copy opens in the editor: unsaved edits are thrown away on purpose, or the user stays.
        def answered(yes: bool | None) -> None:
            if yes:
                ask_name()

        self.app.push_screen(ConfirmScreen(f"Discard the unsaved changes to {self.current.name}?", "Discard"),
                             answered)

    @work(thread=True, group="presets-io", exit_on_error=False)
    def _duplicate(self, entry: PresetEntry, name: str) -> None:
        try:
            text = self.app.backend.read_text(entry.path)
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot duplicate", severity="error")
            return
        origin = entry.name if entry.origin == "built-in" else origin_of(text)
        self.app.call_from_thread(self._save_copy, text, name, origin)

    def _save_copy(self, text: str, name: str, origin: str | None) -> None:
        try:
            copy = copy_of(text, name, origin)
        except EditError as exc:
            self.notify(str(exc), title="cannot rename the copy", severity="error")
            return
        self._save(name, copy, select=f"workspace:{name}")

    def _save(self, name: str, text: str, select: str | None = None) -> None:
        def saved(path: Path) -> None:
            if self.current is not None and self.current.origin == "workspace" and self.current.name == name:
                self.saved_text = text
                self._update_title()
            self.notify(f"Saved {path}.", timeout=3)
            if select is not None:
                self.current = None  # load the new file into the editor
            self.list_presets(select)

        self.app.call_blocking(f"save {name}", self.app.backend.save_preset, name, text, then=saved)

    def action_diff(self) -> None:
        if self.current is None:
            return
        self._diff(self.current, self.query_one(YamlEditor).text)

    @work(thread=True, group="presets-io", exit_on_error=False)
    def _diff(self, entry: PresetEntry, text: str) -> None:
        try:
            title, diff = diff_against_builtin(entry, text, self.entries, self.app.backend.read_text)
        except Exception as exc:
            self.app.call_from_thread(self.notify, user_message(exc), title="cannot diff", severity="error")
            return
        self.app.call_from_thread(self.app.push_screen, DiffScreen(title, diff))

    def action_submit(self) -> None:
        if self.current is None:
            return
        text = self.query_one(YamlEditor).text
        source = self.current.name

        def chosen(request: SubmitRequest | None) -> None:
            if request is None:
                return
            backend = self.app.backend
            self.app.call_blocking(
                f"submit {source}", backend.submit_text, text, source, name=request.name,
                overrides=request.overrides,
                then=lambda run: self.notify(f"{run.name} queued ({run.id}); press 1 to watch the queue.", timeout=5))

        self.app.push_screen(SubmitScreen(preset=source, text=text), chosen)


def check_text(text: str, source: str) -> Validation:
    """Parse and validate editor text; never raises."""
    from presets import PresetError, Problem, load_preset_text

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if not isinstance(data, dict):
        data = None
    try:
        preset = load_preset_text(text, source)
    except PresetError as exc:
        return Validation(text, data, list(exc.problems), None)
    except Exception as exc:  # the validator itself failed: say so in place rather than crash
        return Validation(text, data, [Problem("", f"cannot validate: {user_message(exc)}")], None)
    return Validation(text, data, [], preset.kind)


def diff_against_builtin(entry: PresetEntry, text: str, entries: list[PresetEntry], read_text) -> tuple[str, str]:
    """(title, unified diff) of `text` against the built-in it came from.

    A built-in diffs against its file (the unsaved edits); a workspace preset against the built-in
    named in its "# based on built-in preset:" line, else against the most similar built-in.
    """
    builtins = {e.name: e for e in entries if e.origin == "built-in"}
    if entry.origin == "built-in":
        base_name, how = entry.name, "unsaved changes"
    else:
        base_name = origin_of(text)
        how = "copied from"
        if base_name not in builtins:
            scores = {name: difflib.SequenceMatcher(None, read_text(e.path), text).ratio() for name, e in builtins.items()}
            if not scores:
                raise ValueError("there are no built-in presets to compare with")
            base_name, how = max(scores, key=scores.get), "most similar built-in"
    base_text = read_text(builtins[base_name].path)
    diff = "".join(difflib.unified_diff(
        base_text.splitlines(keepends=True), _with_newline(text).splitlines(keepends=True),
        fromfile=f"built-in/{base_name}.yaml", tofile=f"{entry.name}.yaml (editor)"))
    return f"{entry.name} against built-in {base_name} ({how})", diff


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"
