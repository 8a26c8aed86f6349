"""Charts as server-rendered SVG: no script, no library, readable without colour.

Each chart is an ``<svg role="img">`` with a title and a description, and each
series differs by more than its colour: bars by fill pattern, lines by dash and
marker shape, and the legend names them. The page puts the same numbers in a
table beside the chart for screen readers and for copying.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 960, 270
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 16, 62


@dataclass(frozen=True)
class Series:
    """One named row of values (None: no value at that point)."""

    name: str
    values: Sequence[float | None]


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _frame(title: str, description: str, y_label: str, top: float, body: list[str]) -> Markup:
    chart_id = "c" + format(abs(hash((title, description))) % 10**8, "d")
    plot_h = HEIGHT - TOP - BOTTOM
    grid = []
    # 0, 5, 10, 15, 20 for a top of 20; 0, 2, 4, 6, 8, 10 for 10 (whole counts stay whole).
    steps = 4 if f"{top:e}"[0] == "2" else 5
    for i in range(steps + 1):
        value = top * i / steps
        y = TOP + plot_h - plot_h * i / steps
        grid.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_number(value)}</text>"
        )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" preserveAspectRatio="xMidYMid meet">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(description)}</desc>'
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" class="hatch-bg"/>'
        '<line x1="0" y1="0" x2="0" y2="6" class="hatch-line"/></pattern></defs>'
        + "".join(grid)
        + f'<text class="axis-label" x="14" y="{TOP + plot_h / 2:.0f}" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.0f})" text-anchor="middle">'
        f"{escape(y_label)}</text>" + "".join(body) + "</svg>"
    )


def _x_labels(hours: Sequence[dt.datetime], x_of: list[float]) -> list[str]:
    """Hour labels under the axis; the date on a second line at the start and at midnight."""
    every = max(1, math.ceil(len(hours) / 12))
    out = []
    y = HEIGHT - BOTTOM + 16
    for i, (hour, x) in enumerate(zip(hours, x_of, strict=True)):
        if i % every:
            continue
        date = (
            f'<tspan x="{x:.1f}" dy="14">{hour:%d %b}</tspan>' if i == 0 or hour.hour == 0 else ""
        )
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{y}" text-anchor="middle">{hour:%H}:00{date}</text>'
        )
    return out


def _legend(names: Sequence[str], kind: str) -> list[str]:
    out = []
    x = LEFT + 8
    for i, name in enumerate(names):
        y = HEIGHT - 6
        if kind == "bar":
            out.append(f'<rect class="s{i}" x="{x}" y="{y - 9}" width="12" height="10"/>')
        else:
            out.append(f'<line class="l{i}" x1="{x - 2}" x2="{x + 14}" y1="{y - 4}" y2="{y - 4}"/>')
            out.append(_marker(i, x + 6, y - 4))
        out.append(f'<text class="legend" x="{x + 18}" y="{y}">{escape(name)}</text>')
        x += 30 + 7 * len(name)
    return out


def _marker(i: int, x: float, y: float) -> str:
    if i % 2 == 0:
        return f'<circle class="m{i}" cx="{x:.1f}" cy="{y:.1f}" r="3.5"/>'
    return f'<rect class="m{i}" x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7"/>'


def hourly_bars(
    hours: Sequence[dt.datetime], series: Sequence[Series], *, title: str, y_label: str
) -> Markup:
    """Grouped bars, one group per hour; the first series solid, the second hatched."""
    values = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(hours))
    bar = max(1.0, slot * 0.8 / max(1, len(series)))
    body: list[str] = []
    centres = [LEFT + slot * (i + 0.5) for i in range(len(hours))]
    for si, s in enumerate(series):
        for i, v in enumerate(s.values):
            if not v:
                continue
            h = plot_h * v / top
            x = LEFT + slot * i + slot * 0.1 + bar * si
            body.append(
                f'<rect class="s{si}" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}"><title>{escape(s.name)} '
                f"{hours[i]:%d %b %H:00}: {_number(v)}</title></rect>"
            )
    body += _x_labels(hours, centres) + _legend([s.name for s in series], "bar")
    description = "; ".join(
        f"{s.name}: {sum(v or 0 for v in s.values):.0f} in total" for s in series
    )
    return _frame(title, description, y_label, top, body)


def hourly_lines(
    hours: Sequence[dt.datetime], series: Sequence[Series], *, title: str, y_label: str
) -> Markup:
    """Lines with markers, one per series (solid with circles, dashed with squares)."""
    values = [v for s in series for v in s.values if v is not None]
    top = _nice_max(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(hours))
    centres = [LEFT + slot * (i + 0.5) for i in range(len(hours))]
    body: list[str] = []
    for si, s in enumerate(series):
        points = [
            (centres[i], TOP + plot_h - plot_h * v / top, v)
            for i, v in enumerate(s.values)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            body.append(f'<polyline class="l{si}" points="{path}"/>')
        for x, y, v in points:
            body.append(f"<g>{_marker(si, x, y)}<title>{escape(s.name)}: {_number(v)}</title></g>")
    if not values:
        body.append(
            f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
            "no deliveries in this period</text>"
        )
    body += _x_labels(hours, centres) + _legend([s.name for s in series], "line")
    description = "; ".join(
        f"{s.name}: highest {_number(max((v for v in s.values if v is not None), default=0))}"
        for s in series
    )
    return _frame(title, description, y_label, top, body)


def distribution(
    counts: Sequence[int],
    reference: Sequence[float] | None,
    edges: Sequence[float],
    *,
    title: str,
) -> Markup:
    """A small histogram of image values: the scanner's share per bin as solid bars, the
    reference's share as a dashed step line with square markers (when there is one)."""
    width, height, left, bottom, top_pad = 300, 96, 6, 18, 6
    total = sum(counts)
    shares = [c / total if total else 0.0 for c in counts]
    top = max([*shares, *(reference or [])], default=0.0) or 1.0
    plot_h = height - bottom - top_pad
    slot = (width - 2 * left) / max(1, len(counts))
    body = []
    for i, share in enumerate(shares):
        h = plot_h * share / top
        body.append(
            f'<rect class="s0" x="{left + slot * i + 1:.1f}" y="{top_pad + plot_h - h:.1f}" '
            f'width="{slot - 2:.1f}" height="{h:.1f}"><title>{edges[i]:.1f} to '
            f"{edges[i + 1]:.1f}: {100 * share:.0f}% of this scanner's images</title></rect>"
        )
    if reference:
        points = []
        for i, share in enumerate(reference):
            y = top_pad + plot_h - plot_h * share / top
            points += [f"{left + slot * i:.1f},{y:.1f}", f"{left + slot * (i + 1):.1f},{y:.1f}"]
            body.append(
                f"<g>{_marker(1, left + slot * (i + 0.5), y)}<title>{edges[i]:.1f} to "
                f"{edges[i + 1]:.1f}: {100 * share:.0f}% in the reference</title></g>"
            )
        body.insert(0, f'<polyline class="l1" points="{" ".join(points)}"/>')
    for value in (edges[0], edges[len(edges) // 2], edges[-1]):
        x = left + (width - 2 * left) * (value - edges[0]) / (edges[-1] - edges[0])
        anchor = "start" if value == edges[0] else "end" if value == edges[-1] else "middle"
        body.append(
            f'<text class="tick" x="{x:.1f}" y="{height - 4}" text-anchor="{anchor}">'
            f"{value:.1f}</text>"
        )
    chart_id = "d" + format(abs(hash((title, tuple(counts)))) % 10**8, "d")
    description = "Share of images per value bin: " + ", ".join(
        f"{edges[i]:.1f}-{edges[i + 1]:.1f} {100 * s:.0f}%"
        + (f" (reference {100 * reference[i]:.0f}%)" if reference else "")
        for i, s in enumerate(shares)
    )
    return Markup(
        f'<svg class="chart mini" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d">'
        f'<title id="{chart_id}-t">{escape(title)}</title>'
        f'<desc id="{chart_id}-d">{escape(description)}</desc>' + "".join(body) + "</svg>"
    )
