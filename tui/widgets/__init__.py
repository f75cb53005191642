"""Widgets of the TUI. They draw what they are given and post messages; they hold no business logic."""
