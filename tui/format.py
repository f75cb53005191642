"""How numbers, durations, sizes and states read on screen. Pure functions, no Textual."""

from __future__ import annotations

import math

# Theme variables where the app resolves them (Content markup), so 16-colour terminals get the
# nearest of their own colours.
STATE_STYLES = {
    "queued": "$text-muted",
    "running": "bold $success",
    "completed": "$success",
    "failed": "bold $error",
    "cancelled": "$warning",
    "interrupted": "bold $warning",
}
STATE_ICONS = {
    "queued": "…",
    "running": "▶",
    "completed": "✓",
    "failed": "✗",
    "cancelled": "■",
    "interrupted": "‖",
}
ACTIVE_STATES = ("queued", "running")
SEVERITY_STYLES = {"info": "$accent", "warning": "$warning", "error": "bold $error"}


def duration(seconds: float | None) -> str:
    """42s, 3m05s, 1h02m, 2d03h."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size(n_bytes: float | None) -> str:
    if n_bytes is None or not math.isfinite(n_bytes):
        return "—"
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def gib(n_bytes: float | None) -> str:
    """Memory in GiB with one decimal, without the unit (used in `used/total GiB`)."""
    if n_bytes is None or not math.isfinite(n_bytes):
        return "—"
    return f"{n_bytes / 2**30:.1f}"


def count(n: float | None) -> str:
    """1.2k, 3.4M, 7.0B — parameter and token counts."""
    if n is None or not math.isfinite(n):
        return "—"
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= threshold:
            return f"{n / threshold:.1f}{suffix}"
    return f"{n:.0f}"


def number(value: float | None, digits: int = 4) -> str:
    """A metric value: fixed point for ordinary magnitudes, scientific for tiny or huge ones."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Inf" if value > 0 else "-Inf"
    if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 1e6):
        return f"{value:.{max(1, digits - 2)}e}"
    return f"{value:.{digits}f}"


def bar(fraction: float | None, width: int = 10) -> str:
    """A text progress bar with eighth-block resolution: ███████▍░░."""
    if fraction is None or not math.isfinite(fraction):
        return "░" * width
    fraction = min(1.0, max(0.0, fraction))
    eighths = int(round(fraction * width * 8))
    full, rest = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[rest] if rest else ""
    text = "█" * full + partial.strip()
    return text + "░" * (width - len(text))


def eta(step: int | None, total: int | None, elapsed: float | None) -> float | None:
    """Seconds left at the average pace so far (None until there is a pace)."""
    if not step or not total or elapsed is None or elapsed <= 0 or step >= total:
        return None if not (step and total and step >= total) else 0.0
    return elapsed / step * (total - step)


def user_message(exc: BaseException) -> str:
    """How an error reads, the same in the CLI and the TUI: the message, then the advice after an arrow.

    tunebench's own errors (presets.TunebenchError) carry both; a missing file reads as its path; any
    other exception (a library's) reads as its message: a class name means nothing to the reader.
    Every screen and the CLI show errors through this one function."""
    from presets.errors import TunebenchError

    advice = None
    if isinstance(exc, TunebenchError):
        text, advice = exc.message, exc.advice
    elif isinstance(exc, OSError) and exc.filename:
        text = f"{exc.strerror or exc}: {exc.filename}"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])  # KeyError's str() adds quotes
    else:
        text = str(exc).strip()
        if not text:  # nothing else to go on (a bare assert): then, and only then, the class says what broke
            text, advice = f"an unexpected error ({type(exc).__name__}) with no message", \
                "please report it, with what you did just before"
    return f"{text}\n  → {advice}" if advice else text
