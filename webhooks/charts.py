"""The dashboard's charts: inline SVG drawn from numbers, so the page needs no JavaScript and loads nothing.

Pure functions of their data (no request, no Redis): each returns the `<svg>` as `Markup`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from markupsafe import Markup

from webhooks.labels import label as words
from webhooks.labels import titled

# Pure functions from numbers to SVG text; every string that came from data is escaped.

FONT = "font-family='system-ui, -apple-system, Segoe UI, Roboto, sans-serif'"
WIDTH = 560
LABEL_W = 170  # room for a 22-character label in words ("Decision maker bought…")
ROW_H = 26
BAR_H = 16

MAX_ROWS = 12  # per chart; the rest is folded into "(other)" so a noisy field cannot flood the page
# Loss reasons, from Tableau's palettes, leaving out the red, orange and green that mean LOST,
# BREAKUP_DUE and won/ACTIVE elsewhere on the page.
PALETTE = ("#4e79a7", "#76b7b2", "#b07aa1", "#edc948", "#9c755f", "#ff9da7", "#a0cbe8", "#8cd17d", "#d4a6c8")
OTHER_COLOR = "#bab0ac"
STATE_COLORS = {
    "LOST": "#e15759",
    "BREAKUP_DUE": "#f28e2b",
    "REENGAGE_DUE": "#4e79a7",
    "SUPPRESSED": "#79706e",
    "ACTIVE": "#59a14f",
    "WON": "#2e7d32",  # a darker green than ACTIVE: customers
}
WON_COLOR, LOST_COLOR = "#59a14f", "#e15759"
# Builds the address a bar or column links to (`link(group, series)`), or None for no link.
Link = Callable[[str, str], str | None]


def pct(x: float) -> str:
    """A share as people read it: 42%, 3.5%, 0%."""
    return f"{x * 100:.0f}%" if x * 100 >= 10 or x == 0 else f"{x * 100:.1f}%"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ink(fill: str) -> str:
    """Pick dark or white text for a label drawn on `fill` (#rrggbb), whichever reads better."""
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#111827" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#fff"


def _linked(element: str, href: str | None) -> str:
    """Wrap an SVG element in a link to `href` (a lead list), or leave it be."""
    if not href:
        return element
    return f"<a class='to-leads' href='{_e(href)}'>{element}</a>"


def _short(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def axis(value: float) -> tuple[int, int]:
    """Return (axis maximum, tick step) for counts up to `value`: whole steps of 1, 2 or 5 times 10^k, at most 5."""
    if value <= 0:
        return 1, 1
    power = 10 ** math.floor(math.log10(value))
    for step in (power // 10, power // 5, power // 2, power, 2 * power, 5 * power):
        if step >= 1 and value / step <= 5:
            return int(math.ceil(value / step) * step), int(step)
    return int(10 * power), int(2 * power)  # unreachable: 5 * power * 5 > value


def _svg(chart_id: str, title: str, desc: str, width: int, height: int, body: Iterable[str]) -> Markup:
    head = (
        f"<svg class='chart' data-chart='{_e(chart_id)}' role='img' viewBox='0 0 {width} {height}' "
        f"width='100%' preserveAspectRatio='xMinYMin meet' aria-labelledby='{_e(chart_id)}-t {_e(chart_id)}-d' "
        f"xmlns='http://www.w3.org/2000/svg' {FONT}>"
        f"<title id='{_e(chart_id)}-t'>{_e(title)}</title><desc id='{_e(chart_id)}-d'>{_e(desc)}</desc>"
    )
    return Markup(head + "".join(body) + "</svg>")


def _empty(chart_id: str, title: str, message: str) -> Markup:
    body = [
        "<rect x='0.5' y='0.5' width='559' height='79' rx='6' fill='#f6f7f9' stroke='#e3e6ea'/>",
        f"<text x='280' y='45' text-anchor='middle' font-size='13' fill='#6b7280'>{_e(message)}</text>",
    ]
    return _svg(chart_id, title, message, WIDTH, 80, body)


def _grid(x0: float, x1: float, top: float, bottom: float, scale: int, step: int, fmt: str = "{:,}") -> list[str]:
    out = []
    for tick in range(0, scale + 1, step):
        x = x0 + (x1 - x0) * tick / scale
        out.append(f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{bottom}' stroke='#e5e7eb'/>")
        label = fmt.format(tick)
        out.append(
            f"<text x='{x:.1f}' y='{bottom + 13}' text-anchor='middle' font-size='10' fill='#6b7280'>{label}</text>"
        )
    return out


def stacked_bars(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, Mapping[str, int]]],
    colors: Mapping[str, str],
    unit: str = "",
    empty: str = "No data yet",
    link: Link | None = None,
) -> Markup:
    """Draw horizontal bars, one per row, stacked by series, each labelled with its total.

    Rows and series are identifiers: drawn in words, with the identifier in the tooltip;
    `link(row, series)` gives the lead list a bar segment opens (None: no link).
    """
    rows = [(label, values) for label, values in rows if sum(values.values()) > 0]
    if not rows:
        return _empty(chart_id, title, empty)
    scale, step = axis(max(sum(v.values()) for _, v in rows))
    x0, x1, top = LABEL_W, WIDTH - 44, 8
    bottom = top + ROW_H * len(rows)
    body = _grid(x0, x1, top, bottom, scale, step)
    for i, (label, values) in enumerate(rows):
        y = top + i * ROW_H + (ROW_H - BAR_H) / 2
        total = sum(values.values())
        body.append(
            f"<text x='{x0 - 8}' y='{y + BAR_H / 2 + 4:.1f}' text-anchor='end' font-size='12' fill='#1f2937'>"
            f"<title>{_e(titled(label))}</title>{_e(_short(words(label)))}</text>"
        )
        x = float(x0)
        for series, color in list(colors.items()) + [(k, OTHER_COLOR) for k in values if k not in colors]:
            n = values.get(series, 0)
            if n <= 0:
                continue
            w = (x1 - x0) * n / scale
            name = (
                f"{titled(label)}: {n} {unit}" if len(colors) == 1 else f"{titled(label)}, {titled(series)}: {n} {unit}"
            )
            bar = (
                f"<rect class='bar' x='{x:.1f}' y='{y:.1f}' width='{max(w, 1):.1f}' height='{BAR_H}' "
                f"fill='{color}'><title>{_e(name.strip())}</title></rect>"
            )
            body.append(_linked(bar, link(label, series) if link else None))
            if w >= 22 and len(values) > 1:
                body.append(
                    f"<text x='{x + w / 2:.1f}' y='{y + BAR_H / 2 + 4:.1f}' text-anchor='middle' font-size='10' "
                    f"fill='{_ink(color)}' aria-hidden='true'>{n}</text>"
                )
            x += w
        body.append(
            f"<text x='{x + 6:.1f}' y='{y + BAR_H / 2 + 4:.1f}' font-size='12' font-weight='600' "
            f"fill='#111827'>{total:,}</text>"
        )
    desc = "; ".join(f"{words(label)}: {sum(v.values())}" for label, v in rows)
    return _svg(chart_id, title, f"{title} ({unit}). {desc}", WIDTH, int(bottom + 20), body)


def rates_chart(chart_id: str, title: str, groups: Mapping[str, Mapping[str, Any]], link: Link | None = None) -> Markup:
    """Draw, per group, a conversion-rate bar and a loss-rate bar on a 0-100 % scale (`link(group, "won"|"lost")`)."""
    rows = sorted(groups.items(), key=lambda kv: (-int(kv[1].get("leads", 0)), kv[0]))[:MAX_ROWS]
    rows = [(label, row) for label, row in rows if int(row.get("leads", 0)) > 0]
    if not rows:
        return _empty(chart_id, title, "No leads yet")
    x0, x1, top, pair_h, bar_h = LABEL_W, WIDTH - 92, 8, 40, 13
    bottom = top + pair_h * len(rows)
    body = _grid(x0, x1, top, bottom, 100, 25, "{}%")
    for i, (label, row) in enumerate(rows):
        y = top + i * pair_h + 6
        leads = int(row.get("leads", 0))
        body.append(
            f"<text x='{x0 - 8}' y='{y + bar_h + 4:.1f}' text-anchor='end' font-size='12' fill='#1f2937'>"
            f"<title>{_e(titled(label))}</title>{_e(_short(words(label)))}</text>"
        )
        for j, (kind, rate_key, count_key, color) in enumerate(
            (("won", "conversion_rate", "won", WON_COLOR), ("lost", "loss_rate", "lost", LOST_COLOR))
        ):
            rate = float(row.get(rate_key, 0.0))
            count = int(row.get(count_key, 0))
            by = y + j * (bar_h + 2)
            w = (x1 - x0) * rate
            bar = (
                f"<rect class='bar' x='{x0}' y='{by:.1f}' width='{max(w, 1):.1f}' height='{bar_h}' fill='{color}'>"
                f"<title>{_e(titled(label))}: {count} of {leads} leads {kind} ({pct(rate)})</title></rect>"
            )
            body.append(_linked(bar, link(label, kind) if link else None))
            body.append(
                f"<text x='{x0 + w + 5:.1f}' y='{by + bar_h - 2:.1f}' font-size='11' fill='#111827'>"
                f"{pct(rate)} <tspan fill='#6b7280'>({count}/{leads})</tspan></text>"
            )
    desc = "; ".join(
        f"{words(label)}: {pct(float(r.get('conversion_rate', 0)))} won, {pct(float(r.get('loss_rate', 0)))} lost"
        for label, r in rows
    )
    return _svg(chart_id, title, f"{title}. {desc}", WIDTH, int(bottom + 20), body)


def columns(
    chart_id: str,
    title: str,
    days: Sequence[tuple[str, Mapping[str, int]]],
    colors: Mapping[str, str],
    link: Link | None = None,
) -> Markup:
    """Draw one stacked column per day, labelled with its total when there were decisions (`link(day, state)`)."""
    width, height, x0, top, bottom = 1140, 230, 40, 14, 196
    total_max = max((sum(v.values()) for _, v in days), default=0)
    scale, step = axis(total_max)
    slot = (width - x0 - 10) / max(len(days), 1)
    bar_w = min(slot * 0.7, 28)
    body = []
    for tick in range(0, scale + 1, step):
        y = bottom - (bottom - top) * tick / scale
        body.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{width - 10}' y2='{y:.1f}' stroke='#e5e7eb'/>")
        body.append(
            f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end' font-size='10' fill='#6b7280'>{tick:,}</text>"
        )
    for i, (day, values) in enumerate(days):
        cx = x0 + slot * i + slot / 2
        y = float(bottom)
        for state, color in list(colors.items()) + [(k, OTHER_COLOR) for k in values if k not in colors]:
            n = values.get(state, 0)
            if n <= 0:
                continue
            h = (bottom - top) * n / scale
            y -= h
            bar = (
                f"<rect class='bar' x='{cx - bar_w / 2:.1f}' y='{y:.1f}' width='{bar_w:.1f}' height='{h:.1f}' "
                f"fill='{color}'><title>{day}, {_e(titled(state))}: {n}</title></rect>"
            )
            body.append(_linked(bar, link(day, state) if link else None))
        total = sum(values.values())
        if total:
            body.append(
                f"<text x='{cx:.1f}' y='{y - 4:.1f}' text-anchor='middle' font-size='10' font-weight='600' "
                f"fill='#111827'>{total}</text>"
            )
        if i % max(1, len(days) // 10) == 0 or i == len(days) - 1:
            body.append(
                f"<text x='{cx:.1f}' y='{bottom + 16}' text-anchor='middle' font-size='10' fill='#6b7280'>"
                f"{day[5:]}</text>"
            )
    if not total_max:
        body.append(
            f"<text x='{width / 2:.0f}' y='{(top + bottom) / 2:.0f}' text-anchor='middle' font-size='13' "
            "fill='#6b7280'>No decisions in this period</text>"
        )
    desc = "; ".join(f"{day}: {sum(v.values())}" for day, v in days if sum(v.values()))
    return _svg(chart_id, title, f"{title}. {desc or 'none'}", width, height, body)
