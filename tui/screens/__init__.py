"""Screens of the TUI; app.NAVIGATION lists them and imports each lazily."""
