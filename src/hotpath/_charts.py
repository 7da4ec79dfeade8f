"""Small inline-SVG charts for hotpath's self-contained HTML reports (no JavaScript, no
external assets): grouped vertical bars and lines with a legend (demo), horizontal bars with
long labels (doctor's top queries)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#c0392b", "#2874a6", "#239b56", "#b9770e", "#7d3c98", "#17a589", "#566573")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * magnitude:
            return step * magnitude
    return 10.0 * magnitude


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts = []
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="{y + i * 16}" width="10" height="10" fill="{color}"/>')
        parts.append(
            f'<text x="{x + 14}" y="{y + i * 16 + 9}" font-size="11">{escape(name)}</text>'
        )
    return parts


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    unit: str = "",
    width: int = 720,
    height: int = 300,
) -> str:
    """Grouped vertical bars: one group per category, one bar per series."""
    names = list(series)
    labels = [c if len(c) <= 30 else c[:29] + "…" for c in categories]
    longest = max((len(label) for label in labels), default=0)
    # rotated labels hang down-left from their group: leave room for the longest one
    left, right, top, bottom = max(56, min(170, longest * 5)), 170, 28, 40 + longest * 3
    width = max(width, left + right + 60 * len(categories))
    plot_w, plot_h = width - left - right, height - top - bottom
    top_value = _nice_max(max((v for vs in series.values() for v in vs), default=0.0))
    group_w = plot_w / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(names))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for tick in range(5):
        value = top_value * tick / 4
        y = top + plot_h - plot_h * tick / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_fmt(value)}</text>"
        )
    for c, category in enumerate(categories):
        x0 = left + c * group_w + group_w * 0.1
        for s, name in enumerate(names):
            value = series[name][c]
            bar_h = plot_h * value / top_value
            x = x0 + s * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar_w * 0.92:.1f}" '
                f'height="{bar_h:.1f}" fill="{PALETTE[s % len(PALETTE)]}">'
                f"<title>{escape(name)} · {escape(category)}: {_fmt(value)} {escape(unit)}</title>"
                "</rect>"
            )
        label_x = left + c * group_w + group_w / 2
        parts.append(
            f'<text x="{label_x:.1f}" y="{top + plot_h + 14}" font-size="10" '
            f'text-anchor="end" transform="rotate(-25 {label_x:.1f} '
            f'{top + plot_h + 14})">{escape(category)}</text>'
        )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="10" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(unit)}</text>'
    )
    parts += _legend(names, left + plot_w + 16, top)
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    x_label: str,
    y_label: str,
    width: int = 720,
    height: int = 280,
) -> str:
    """Lines through (x, y) points, one per series, on linear axes from zero."""
    names = list(series)
    left, right, top, bottom = 56, 170, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [p for values in series.values() for p in values]
    x_max = _nice_max(max((x for x, _ in points), default=0.0))
    y_max = _nice_max(max((y for _, y in points), default=0.0))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" font-family="sans-serif">',
        f'<text x="{left}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    for tick in range(5):
        y = top + plot_h - plot_h * tick / 4
        x = left + plot_w * tick / 4
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_fmt(y_max * tick / 4)}</text>"
        )
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="10" '
            f'text-anchor="middle">{_fmt(x_max * tick / 4)}</text>'
        )
    for s, name in enumerate(names):
        path = " ".join(
            f"{left + plot_w * x / x_max:.1f},{top + plot_h - plot_h * y / y_max:.1f}"
            for x, y in series[name]
        )
        parts.append(
            f'<polyline points="{path}" fill="none" stroke-width="2" '
            f'stroke="{PALETTE[s % len(PALETTE)]}"><title>{escape(name)}</title>'
            "</polyline>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" font-size="10" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="10" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    parts += _legend(names, left + plot_w + 16, top)
    parts.append("</svg>")
    return "".join(parts)


def hbar_chart(items: Sequence[tuple[str, float]], unit: str, width: int = 640) -> str:
    """A horizontal bar chart as inline SVG (labels escaped)."""
    if not items:
        return "<p>no data</p>"
    top = max(v for _, v in items) or 1.0
    row = 22
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{row * len(items) + 4}" role="img">'
    ]
    for i, (label, value) in enumerate(items):
        bar = (width - 260) * value / top
        y = i * row + 2
        parts.append(
            f'<text x="0" y="{y + 15}" font-size="12">{escape(label[:38])}</text>'
            f'<rect x="250" y="{y + 3}" width="{bar:.1f}" height="16" fill="#4a7bd0"/>'
            f'<text x="{255 + bar:.1f}" y="{y + 15}" font-size="12">{value:,.1f} {unit}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
