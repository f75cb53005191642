"""The base of the screens that the app's polls redraw (Runs, Dashboard, Checkpoints, Evals).

Two rules keep an hours-long session as fast as its first minute:
- the footer is recomposed only when what it shows (the active keys, their labels, enabled or not)
  has changed: each recompose is real work, and Textual's Footer leaves one watcher behind per key
  on every recompose, so a refresh on every poll (0.4 s) grows a list that every later change scans;
- a screen that is not shown does no polling work: a poll that arrives while it is buried under
  another (full) screen only marks it stale, and it catches up once, when it is shown again. A
  screen under modal dialogs is still on the terminal, and still redrawn.
"""

from __future__ import annotations

from textual import on
from textual.events import ScreenResume
from textual.screen import ModalScreen, Screen


class PolledScreen(Screen):
    _shown_keys: tuple | None = None
    _stale = False

    def refresh_bindings(self) -> None:
        if not self.children:
            return  # a screen on its way out (its widgets are gone): it shows no keys any more
        shown = tuple((key, active.binding.action, active.binding.description, active.enabled, active.tooltip)
                      for key, active in self.active_bindings.items())
        if shown != self._shown_keys:
            self._shown_keys = shown
            super().refresh_bindings()

    def subscribe_to_polls(self, redraw) -> None:
        """Call `redraw()` after every poll of the app while this screen is shown."""

        def on_poll(_: object) -> None:
            if not self.skip_while_hidden():
                redraw()

        self._redraw_after_poll = redraw
        self.app.state_signal.subscribe(self, on_poll)

    @property
    def shown(self) -> bool:
        """On the terminal: the top screen, or under modal dialogs only."""
        stack = self.app.screen_stack
        if self not in stack:
            return False
        return all(isinstance(above, ModalScreen) for above in stack[stack.index(self) + 1:])

    def skip_while_hidden(self) -> bool:
        """For a screen's own timers: True (and the screen marked stale) when it is not shown."""
        if self.shown:
            return False
        self._stale = True
        return True

    def catch_up(self) -> None:
        """What a screen shown again does when polls came while it was hidden."""
        self._redraw_after_poll()

    @on(ScreenResume)
    def _resumed(self) -> None:
        if self._stale:
            self._stale = False
            self.catch_up()
