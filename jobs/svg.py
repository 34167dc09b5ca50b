"""Charts as inline SVG text: the report and preview pages must open offline, from a file, anywhere.

A plotting library would either fetch scripts from a CDN or add a heavy dependency to
every install for a few charts; these are drawn by hand instead, with the parts that
make a chart readable: nice round ticks, grid lines, axis labels, a title and a legend.
Every label is escaped, since series names come from endpoint names and error kinds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["PALETTE", "Point", "Series", "bar_chart", "fmt_number", "fmt_seconds", "line_chart", "nice_ticks",
           "range_bars"]

# Tableau 10: distinct for the common kinds of colour blindness, and no colour the page's own styles use,
# so a screenshot can tell a drawn chart from an empty frame by these colours alone.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
INK, GRID, MUTED = "#222", "#e3e3e3", "#666"
Format = Callable[[float], str]
Point = tuple[float, float]
V = TypeVar("V", covariant=True)


@dataclass
class Series(Generic[V]):
    """A named run of values: (x, y) points for ``line_chart``, one number a range or category for the bars."""

    name: str
    values: Sequence[V] = field(default_factory=list)
    color: str | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks, value = [], first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        if value >= high - 1e-9 * step:
            break
        value += step
    return ticks


def fmt_number(value: float) -> str:
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            return f"{value / limit:.3g}{suffix}"
    if magnitude and magnitude < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def fmt_seconds(value: float) -> str:
    seconds = abs(value)
    sign = "-" if value < 0 else ""
    if seconds < 1 and seconds:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{sign}{seconds:.3g}s"
    if seconds < 3600:
        return f"{sign}{int(seconds // 60)}m{int(seconds % 60):02d}s" if seconds % 60 else f"{sign}{seconds / 60:.0f}m"
    return f"{sign}{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _color(series: Series[object], index: int) -> str:
    return series.color or PALETTE[index % len(PALETTE)]


def _legend(series: Sequence[Series[object]], always: bool = False) -> list[tuple[str, str]]:
    """One series needs no legend unless its name says more than the title (an error kind)."""
    return [(s.name, _color(s, i)) for i, s in enumerate(series)] if always or len(series) > 1 else []


class _Frame:
    """One chart: the plot area, its two scales, and the axes, grid, title and legend around the marks."""

    def __init__(self, title: str, x_label: str, y_label: str, x_ticks: list[float], y_ticks: list[float],
                 width: int, height: int, legend: list[tuple[str, str]], y_format: Format) -> None:
        self.width, self.height, self.y_format = width, height, y_format
        widest = max(len(y_format(t)) for t in y_ticks)
        self.left, self.right = 30 + round(6.3 * widest), width - 14
        self.top = 34 + (16 if legend else 0)
        self.bottom = height - 42
        self.title, self.x_label, self.y_label = title, x_label, y_label
        self.x_ticks, self.y_ticks, self.legend = x_ticks, y_ticks, legend
        self.marks: list[str] = []

    def x(self, value: float) -> float:
        low, high = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - low) / ((high - low) or 1) * (self.right - self.left)

    def y(self, value: float) -> float:
        low, high = self.y_ticks[0], self.y_ticks[-1]
        return self.bottom - (value - low) / ((high - low) or 1) * (self.bottom - self.top)

    def render(self, x_format: Format | None, x_labels: Sequence[tuple[float, str]] = ()) -> str:
        y_format = self.y_format
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{self.width}" height="{self.height}" '
               f'viewBox="0 0 {self.width} {self.height}" font-family="{escape(FONT)}" font-size="11" role="img">',
               f'<title>{escape(self.title)}</title>',
               f'<rect width="{self.width}" height="{self.height}" fill="#fff"/>',
               f'<text x="{self.left}" y="18" font-size="13" font-weight="600" fill="{INK}">'
               f'{escape(self.title)}</text>']
        for tick in self.y_ticks:
            y = self.y(tick)
            out.append(f'<line x1="{self.left}" x2="{self.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
            out.append(f'<text x="{self.left - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="{MUTED}">'
                       f'{escape(y_format(tick))}</text>')
        labels = list(x_labels) if x_labels else [(t, x_format(t)) for t in self.x_ticks] if x_format else []
        for value, label in labels:
            x = self.x(value)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.bottom}" y2="{self.bottom + 4}" stroke="{MUTED}"/>')
            out.append(f'<text x="{x:.1f}" y="{self.bottom + 16}" text-anchor="middle" fill="{MUTED}">'
                       f'{escape(label)}</text>')
        out.extend(self.marks)
        out.append(f'<line x1="{self.left}" x2="{self.right}" y1="{self.bottom}" y2="{self.bottom}" stroke="{INK}"/>')
        out.append(f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{self.bottom}" stroke="{INK}"/>')
        middle = (self.left + self.right) / 2
        out.append(f'<text x="{middle:.1f}" y="{self.height - 8}" text-anchor="middle" fill="{INK}">'
                   f'{escape(self.x_label)}</text>')
        centre = (self.top + self.bottom) / 2
        out.append(f'<text transform="translate(14 {centre:.1f}) rotate(-90)" text-anchor="middle" fill="{INK}">'
                   f'{escape(self.y_label)}</text>')
        x = self.left
        for name, color in self.legend:
            out.append(f'<rect x="{x}" y="27" width="10" height="10" rx="2" fill="{color}"/>')
            out.append(f'<text x="{x + 14}" y="36" fill="{INK}">{escape(name)}</text>')
            x += 24 + 6.5 * len(name)
        out.append("</svg>")
        return "".join(out)


def _empty(title: str, width: int, height: int, message: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{escape(FONT)}" font-size="12" role="img">'
            f'<title>{escape(title)}</title><rect width="{width}" height="{height}" fill="#fff"/>'
            f'<text x="58" y="18" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{MUTED}">{escape(message)}</text>'
            "</svg>")


def line_chart(series: Sequence[Series[Point]], *, title: str, x_label: str, y_label: str,
               x_format: Format = fmt_number, y_format: Format = fmt_number, width: int = 560, height: int = 250,
               step: bool = False, fill: bool = False, empty: str = "no data") -> str:
    """Lines over (x, y) points; ``step`` holds each value until the next point, as counts per interval do."""
    points = [p for s in series for p in s.values]
    if not points:
        return _empty(title, width, height, empty)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    frame = _Frame(title, x_label, y_label, nice_ticks(min(xs), max(xs), 6), nice_ticks(min(0.0, min(ys)), max(ys)),
                   width, height, _legend(series), y_format)
    for i, s in enumerate(series):
        coords = []
        for j, (x, y) in enumerate(s.values):
            if step and j:
                coords.append((frame.x(x), frame.y(s.values[j - 1][1])))
            coords.append((frame.x(x), frame.y(y)))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        color = _color(s, i)
        if fill and coords:
            base = frame.y(max(frame.y_ticks[0], 0.0))
            frame.marks.append(f'<polygon points="{coords[0][0]:.1f},{base:.1f} {path} {coords[-1][0]:.1f},{base:.1f}"'
                               f' fill="{color}" fill-opacity="0.18"/>')
        frame.marks.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2" '
                           'stroke-linejoin="round"/>')
    return frame.render(x_format)


def range_bars(edges: Sequence[float], series: Sequence[Series[float]], *, title: str, x_label: str, y_label: str,
               x_format: Format = fmt_number, y_format: Format = fmt_number, stacked: bool = True,
               width: int = 560, height: int = 250, empty: str = "no data", legend: bool = False) -> str:
    """Bars over consecutive ranges (a histogram, or counts per time interval): ``values[i]`` spans
    ``edges[i]..edges[i+1]``; several series are stacked, or drawn side by side within each range."""
    if len(edges) < 2 or not any(any(v for v in s.values) for s in series):
        return _empty(title, width, height, empty)
    count = len(edges) - 1
    tops = [sum(s.values[i] for s in series) if stacked else max(s.values[i] for s in series) for i in range(count)]
    frame = _Frame(title, x_label, y_label, nice_ticks(edges[0], edges[-1], 6), nice_ticks(0.0, max(tops)),
                   width, height, _legend(series, legend), y_format)
    base = [0.0] * count
    for k, s in enumerate(series):
        color = _color(s, k)
        for i in range(count):
            value = s.values[i]
            if not value:
                continue
            x0, x1 = frame.x(edges[i]), frame.x(edges[i + 1])
            if not stacked:
                share = (x1 - x0) / len(series)
                x0, x1 = x0 + share * k, x0 + share * (k + 1)
            low = base[i] if stacked else 0.0
            y0, y1 = frame.y(low), frame.y(low + value)
            gap = 1.0 if x1 - x0 > 3 else 0.0
            frame.marks.append(f'<rect x="{x0 + gap / 2:.1f}" y="{y1:.1f}" width="{max(x1 - x0 - gap, 0.8):.1f}" '
                               f'height="{max(y0 - y1, 0.5):.1f}" fill="{color}"><title>{escape(s.name)}: '
                               f'{escape(y_format(value))}</title></rect>')
            if stacked:
                base[i] += value
    return frame.render(x_format)


def bar_chart(categories: Sequence[str], series: Sequence[Series[float]], *, title: str, y_label: str,
              y_format: Format = fmt_number, width: int = 560, height: int = 250, empty: str = "no data") -> str:
    """Grouped vertical bars, one group per category (an endpoint, a variant), one bar per series, values
    written above the bars so that small ones can still be read."""
    if not categories or not any(any(v for v in s.values) for s in series):
        return _empty(title, width, height, empty)
    top = max(v for s in series for v in s.values)
    frame = _Frame(title, "", y_label, [0.0, float(len(categories))], nice_ticks(0.0, top), width, height,
                   _legend(series), y_format)
    slot = 0.7 / len(series)
    for k, s in enumerate(series):
        color = _color(s, k)
        for i, value in enumerate(s.values):
            x0, x1 = frame.x(i + 0.15 + slot * k), frame.x(i + 0.15 + slot * (k + 1))
            y0, y1 = frame.y(0.0), frame.y(value)
            frame.marks.append(f'<rect x="{x0 + 1:.1f}" y="{y1:.1f}" width="{max(x1 - x0 - 2, 1):.1f}" '
                               f'height="{max(y0 - y1, 0.5):.1f}" fill="{color}"/>')
            frame.marks.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 - 4:.1f}" text-anchor="middle" fill="{INK}">'
                               f'{escape(y_format(value))}</text>')
    return frame.render(None, [(i + 0.5, name) for i, name in enumerate(categories)])
