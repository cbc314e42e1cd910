"""An mkdocs hook that draws the benchmark ratios as charts, so that the figures and the
pictures of them cannot disagree: the chart is made from the table at every build.

A table marked with an HTML comment just before it::

    <!-- chart: HTTP RPC against the raw stack -->
    | ratio | req/s | CPU per request |
    | --- | --- | --- |
    | c/a (`@rpc` vs FastAPI route) | 2.53x | 2.37x |

gets an inline SVG bar chart under it: one group of bars per row, one bar per ratio column (a
column whose every cell starts with a number followed by ``x``; text after it is ignored).
Ratios are drawn on a log scale from a line at 1x, so that 2x and 0.5x are as long and a wide
range (0.01x to 32x) stays legible. No script, no network: the SVG is in the page.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!--\s*chart(?::\s*(?P<title>.*?))?\s*-->\s*$")
RATIO = re.compile(r"^\s*(?P<value>\d[\d,]*(?:\.\d+)?)\s*x\b")
COLOURS = ("#2563eb", "#d97706", "#7c3aed", "#0d9488")
"""One colour per ratio column, the same as docs/img/pipeline.svg's."""
TICKS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

WIDTH = 720
LABELS_WIDTH = 250  # the rows' names, left of the plot
PLOT_LEFT = 260
PLOT_RIGHT = 650  # room right of it for the value of the longest bar
BAR = 14
BAR_GAP = 3
GROUP_GAP = 14
LEGEND_HEIGHT = 30
AXIS_HEIGHT = 34
LABEL_CHARS = 36  # a row's name longer than this wraps onto a second line


@dataclass(frozen=True, slots=True)
class Series:
    """One ratio column: its heading, and each row's value and how the table writes it."""

    name: str
    values: tuple[float, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    """What a marked table draws: the rows' names and the ratio columns."""

    title: str
    labels: tuple[str, ...]
    series: tuple[Series, ...]


def on_page_markdown(markdown: str, /, *, page: Any, config: Any, files: Any) -> str:
    """mkdocs' hook: every marked table of the page gets its chart under it."""
    return add_charts(markdown, where=page.file.src_uri)


def add_charts(markdown: str, *, where: str = "page") -> str:
    """``markdown`` with a chart after each table marked ``<!-- chart -->``."""
    lines = markdown.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        match = MARKER.match(lines[index].strip())
        out.append(lines[index])
        index += 1
        if match is None:
            continue
        while index < len(lines) and not lines[index].strip():
            out.append(lines[index])
            index += 1
        table: list[str] = []
        while index < len(lines) and lines[index].lstrip().startswith("|"):
            table.append(lines[index])
            index += 1
        out.extend(table)
        chart = read_chart(table, title=match.group("title") or "", where=where)
        out.extend(["", render(chart), ""])
    return "\n".join(out)


def cells(line: str) -> list[str]:
    """The cells of one markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def ratio(cell: str) -> str | None:
    """``2.53`` of ``2.53x`` (or of ``2.53x (about...)``); ``None`` for a cell that is no ratio."""
    match = RATIO.match(cell)
    return None if match is None else match.group("value")


def read_chart(table: list[str], *, title: str, where: str) -> Chart:
    """The chart of a marked table: its first column names the rows, its ratio columns are
    the bars. A marker without such a table fails the build, rather than draw nothing."""
    if len(table) < 3:
        raise PluginError(f"{where}: <!-- chart --> must come just before a markdown table")
    header, rows = cells(table[0]), [cells(line) for line in table[2:]]
    series = []
    for column in range(1, len(header)):
        texts = [ratio(row[column]) if column < len(row) else None for row in rows]
        if all(text is not None for text in texts):
            found = tuple(text for text in texts if text is not None)
            values = tuple(float(text.replace(",", "")) for text in found)
            series.append(Series(plain(header[column]), values, found))
    if not series:
        raise PluginError(
            f"{where}: the table after <!-- chart --> has no ratio column (cells like 1.25x)"
        )
    return Chart(title, tuple(plain(row[0]) for row in rows), tuple(series))


def plain(text: str) -> str:
    """A cell's text without markdown's code ticks and emphasis."""
    return re.sub(r"[`*_]", "", text)


def scale(values: list[float]) -> tuple[float, float]:
    """The log axis' ends: ticks around every value and 1x."""
    low, high = min([*values, 1.0]), max([*values, 1.0])
    start = max((tick for tick in TICKS if tick <= low / 1.15), default=TICKS[0])
    end = min((tick for tick in TICKS if tick >= high * 1.15), default=TICKS[-1])
    return start, end


def ticks(start: float, end: float) -> list[float]:
    """The ticks to label: 1-2-5 steps, or powers of ten on a wide axis."""
    inside = [tick for tick in TICKS if start <= tick <= end]
    if len(inside) > 7:
        inside = [tick for tick in inside if math.log10(tick).is_integer()]
    return inside


def render(chart: Chart) -> str:
    """The chart as one line of inline SVG in a ``<figure>`` (a blank line would end the
    HTML block that markdown passes through)."""
    values = [value for series in chart.series for value in series.values]
    start, end = scale(values)
    span = math.log(end) - math.log(start)

    def x(value: float) -> float:
        return PLOT_LEFT + (math.log(value) - math.log(start)) / span * (PLOT_RIGHT - PLOT_LEFT)

    group = len(chart.series) * (BAR + BAR_GAP) - BAR_GAP
    top = LEGEND_HEIGHT
    height = top + len(chart.labels) * (group + GROUP_GAP) + AXIS_HEIGHT
    bottom = height - AXIS_HEIGHT
    parts = [_legend(chart.series), _axis(x, start, end, top, bottom)]  # under the bars
    for row, label in enumerate(chart.labels):
        y = top + row * (group + GROUP_GAP) + GROUP_GAP / 2
        parts.append(_label(label, y + group / 2))
        for number, series in enumerate(chart.series):
            bar_y = y + number * (BAR + BAR_GAP)
            value, text = series.values[row], series.texts[row] + "x"
            parts.append(_bar(x, value, text, bar_y, COLOURS[number % 4]))
    title = chart.title or "Ratios of the table above"
    svg = (
        f'<svg class="bench-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" height="{height:.0f}" '
        'style="max-width:100%;height:auto" '
        f'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif" '
        f'font-size="12"><title>{html.escape(title)}</title>{"".join(parts)}</svg>'
    )
    caption = (
        f"{html.escape(chart.title) + ': ' if chart.title else ''}the table's ratios on a log "
        "scale; the line is 1x, bars right of it are above 1x."
    )
    return f'<figure class="bench-chart">{svg}<figcaption>{caption}</figcaption></figure>'


def _legend(series: tuple[Series, ...]) -> str:
    items, left = [], PLOT_LEFT
    for number, one in enumerate(series):
        items.append(
            f'<rect x="{left}" y="8" width="12" height="12" rx="2" '
            f'fill="{COLOURS[number % 4]}"/>'
            f'<text x="{left + 17}" y="18" fill="#334155">{html.escape(one.name)}</text>'
        )
        left += 30 + int(len(one.name) * 6.6)
    return "".join(items)


def _label(label: str, middle: float) -> str:
    lines = [label]
    if len(label) > LABEL_CHARS and " (" in label:
        head, tail = label.split(" (", 1)
        lines = [head, "(" + tail]
    first = middle - (len(lines) - 1) * 7 + 4
    spans = "".join(
        f'<tspan x="{LABELS_WIDTH}" y="{first + line * 14:.1f}">{html.escape(text)}</tspan>'
        for line, text in enumerate(lines)
    )
    return f'<text text-anchor="end" fill="#0f172a">{spans}</text>'


def _bar(x: Any, value: float, text: str, y: float, colour: str) -> str:
    one, end = x(1.0), x(value)
    left, width = min(one, end), max(abs(end - one), 2.0)  # 1.00x still shows as a sliver
    text_x = max(one, end) + 5
    return (
        f'<rect class="bar" x="{left:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BAR}" '
        f'rx="2" fill="{colour}"><title>{text}</title></rect>'
        f'<text x="{text_x:.1f}" y="{y + BAR - 3:.1f}" fill="#334155">{text}</text>'
    )


def _axis(x: Any, start: float, end: float, top: float, bottom: float) -> str:
    parts = [
        f'<line x1="{PLOT_LEFT}" y1="{bottom:.1f}" x2="{PLOT_RIGHT}" y2="{bottom:.1f}" '
        'stroke="#94a3b8"/>'
    ]
    for tick in ticks(start, end):
        at = x(tick)
        parts.append(
            f'<line x1="{at:.1f}" y1="{top:.1f}" x2="{at:.1f}" y2="{bottom:.1f}" '
            f'stroke="{"#0f172a" if tick == 1 else "#e2e8f0"}" '
            f'stroke-width="{1.5 if tick == 1 else 1}"/>'
            f'<text x="{at:.1f}" y="{bottom + 16:.1f}" text-anchor="middle" '
            f'fill="#475569">{tick:g}x</text>'
        )
    return "".join(parts)
