"""A metric plot: plotext lines, the legend in the border title, the last values in the border
subtitle, a placeholder until data arrives. Titles fit the width whole: a narrower plot shortens
them step by step (never "eval…", never a figure cut in two)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from textual.app import RenderResult
from textual.content import Content
from textual_plotext import PlotextPlot


@dataclass(frozen=True)
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    colour: str  # a theme variable name: "primary", "accent", "warning", …


class MetricPlot(PlotextPlot, can_focus=True):
    """Focusable so `z` can zoom the focused plot to the whole screen."""

    ALLOW_MAXIMIZE = True

    def __init__(self, title: str, *, empty: str = "waiting for the first report", id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.title_text = title
        self.empty_text = empty
        self.lines: list[Line] = []
        self.log_y = False
        self.note = ""
        self.values: dict[str, str] = {}

    def on_mount(self) -> None:
        super().on_mount()
        self._update_titles()

    def on_resize(self) -> None:
        self._update_titles()

    def set_lines(self, lines: list[Line], *, log_y: bool = False, note: str = "",
                  values: dict[str, str] | None = None) -> None:
        """values: the last value of each line, by label, as it should read ("0.7256")."""
        lines = [line for line in lines if line.xs]
        if log_y:
            # A log axis cannot show zero or negative values: drop them rather than fail to draw.
            lines = [Line(l.label, *_positive(l.xs, l.ys), l.colour) for l in lines]
            lines = [line for line in lines if line.xs]
        self.lines, self.log_y, self.note = lines, log_y, note
        self.values = dict(values or {})
        self._update_titles()
        self._replot()

    def set_empty(self, text: str) -> None:
        self.empty_text = text
        self.refresh()

    def _update_titles(self) -> None:
        self.border_title, self.border_subtitle = self.titles(self.outer_size.width - 6 if self.outer_size.width else 10**6)

    def titles(self, room: int) -> tuple[Content, Content]:
        """The border title and subtitle that fit `room` cells each: the first of these that fits.
        With one line there is no legend; with several, the legend is the colour of each mark."""
        variables = self.app.theme_variables
        name = Content.from_markup("[b]$title[/]", title=self.title_text)
        note = Content.from_markup("[$text-muted]$note[/]", note=self.note) if self.note else None
        marks = {line.label: Content.from_markup(f"[{_colour(variables, line.colour)}]━[/]") for line in self.lines}
        legend = len(self.lines) > 1
        labels = [line.label for line in self.lines]
        values = [(label, self.values[label]) for label in [*labels, *self.values] if label in self.values]
        values = list(dict(values).items())  # labels with a value, in the lines' order

        def title(with_legend: bool) -> Content:
            parts = [name]
            if with_legend and legend:
                parts += [marks[label] + Content(f" {label}") for label in labels]
            return Content(" ").join(parts + ([note] if note else []))

        def subtitle(style: str, entries=values) -> Content:
            if style == "labels":
                return Content("  ").join(Content(f"{label} {value}") for label, value in entries)
            if style == "tight":
                return Content(" ").join(Content(f"{label} {value}") for label, value in entries)
            if style == "marks":  # the label is the mark's colour (legend in the title or not)
                return Content(" ").join(marks.get(label, Content("")) + Content(f" {value}") for label, value in entries)
            return Content(" ").join(marks.get(label, Content("")) + Content(value) for label, value in entries)

        options = [(title(True), subtitle("labels")), (title(True), subtitle("tight"))]
        if legend:
            options += [(title(True), subtitle("marks")), (title(True), subtitle("packed"))]
        options += [(title(False), subtitle("packed"))]
        for head, foot in options:
            if head.cell_length <= room and foot.cell_length <= room:
                return head, foot
        # Still too narrow: the name alone, and the values that fit whole, first lines first.
        head = name if name.cell_length <= room else Content("")
        kept = list(values)
        while kept and subtitle("packed", kept).cell_length > room:
            kept.pop()
        return head, subtitle("packed", kept) if kept else Content("")

    def _replot(self) -> None:
        self.refresh()  # the figure is built in render(), where the size is known

    def render(self) -> RenderResult:
        width, height = self.size
        if not self.lines or width < 12 or height < 3:
            return Content.from_markup("[$text-muted]$text[/]", text=self.empty_text if not self.lines else "(too small)")
        plt = self.plt
        plt.clear_figure()
        variables = self.app.theme_variables
        for line in self.lines:
            plt.plot(line.xs, line.ys, marker="braille", color=_rgb(variables, line.colour))
        # No box: on a small terminal every row goes to the data. Step labels only when there is room.
        plt.frame(False)
        xs = [x for line in self.lines for x in line.xs]
        ys = [y for line in self.lines for y in line.ys]
        if height >= 8:
            ticks = nice_ticks(min(xs), max(xs), max(2, width // 10))
            plt.xticks(ticks, labels(ticks, integer=True))
        else:
            plt.xticks([])
        if self.log_y:
            plt.yscale("log")
        else:
            ticks = nice_ticks(min(ys), max(ys), max(2, min(5, height // 2)))
            plt.yticks(ticks, labels(ticks))
        return super().render()


def nice_ticks(low: float, high: float, count: int) -> list[float]:
    """About `count` round tick values (1, 2, 2.5, 5 × 10^k apart) within [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    value = math.ceil(low / step) * step
    ticks = []
    while value <= high + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(value, 12))
        value += step
    return ticks or [low]


def labels(ticks: list[float], integer: bool = False) -> list[str]:
    """Short tick labels, with just enough digits that neighbours differ (6.725, 6.73, 6.735)."""
    for digits in range(3, 9):
        texts = [short(t, integer, digits) for t in ticks]
        if len(set(texts)) == len(texts):
            return texts
    return texts


def short(value: float, integer: bool = False, digits: int = 3) -> str:
    """A tick label: 5e-03, 0.35, 1.8k, 120."""
    magnitude = abs(value)
    if value == 0:
        return "0"
    if magnitude >= 1e4:
        for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if magnitude >= threshold:
                return f"{value / threshold:.{digits}g}{suffix}"
    if integer or (magnitude >= 1 and float(value).is_integer()):
        return f"{value:.0f}"
    if magnitude < 1e-2:
        return f"{value:.{digits - 3}e}" if digits > 3 else f"{value:.0e}"
    return f"{value:.{digits}g}"


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys) if y > 0 and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _colour(variables: dict[str, str], name: str) -> str:
    return variables.get(name) or variables.get("foreground", "white")


def _rgb(variables: dict[str, str], name: str) -> tuple[int, int, int] | str:
    from textual.color import Color

    try:
        return Color.parse(_colour(variables, name)).rgb
    except Exception:
        return "white"
