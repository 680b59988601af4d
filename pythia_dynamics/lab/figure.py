"""One small SVG per experiment for docs/hypotheses.md: per measure, a bar per level at the seed mean, a whisker of
± one seed standard deviation and a dot per seed. Plain SVG text, so the docs need no plotting library."""

from __future__ import annotations

import math
from html import escape

import pandas as pd

__all__ = ["effects_svg"]

PANEL_W, PANEL_H, PER_ROW, PAD = 230, 170, 3, 28
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _panel(metric: str, levels: list[str], rows: pd.DataFrame, x0: float, y0: float) -> list[str]:
    values = rows["value"].dropna()
    parts = [f'<text x="{x0 + PANEL_W / 2}" y="{y0 + 14}" text-anchor="middle" font-size="11">{escape(metric)}</text>']
    if values.empty:
        return parts + [f'<text x="{x0 + PANEL_W / 2}" y="{y0 + PANEL_H / 2}" text-anchor="middle" font-size="10">no data</text>']
    stats = rows.groupby("level")["value"].agg(["mean", "std"])
    high = max(values.max(), (stats["mean"] + stats["std"].fillna(0)).max())
    low = min(0.0, values.min(), (stats["mean"] - stats["std"].fillna(0)).min())
    span = (high - low) or 1.0
    top, bottom = y0 + 22, y0 + PANEL_H - 30

    def y(v: float) -> float:
        return bottom - (v - low) / span * (bottom - top)

    parts.append(f'<line x1="{x0 + PAD}" y1="{y(0)}" x2="{x0 + PANEL_W - 6}" y2="{y(0)}" stroke="#888" stroke-width="0.5"/>')
    parts.append(f'<text x="{x0 + PAD - 3}" y="{top + 4}" text-anchor="end" font-size="8">{_fmt(high)}</text>')
    parts.append(f'<text x="{x0 + PAD - 3}" y="{bottom}" text-anchor="end" font-size="8">{_fmt(low)}</text>')
    width = (PANEL_W - PAD - 6) / len(levels)
    for i, level in enumerate(levels):
        cx, colour = x0 + PAD + width * (i + 0.5), COLOURS[i % len(COLOURS)]
        if level not in stats.index or not math.isfinite(stats.loc[level, "mean"]):
            continue
        mean, std = stats.loc[level, "mean"], stats.loc[level, "std"]
        parts.append(f'<rect x="{cx - width * 0.3}" y="{min(y(mean), y(0))}" width="{width * 0.6}" '
                     f'height="{abs(y(0) - y(mean))}" fill="{colour}" fill-opacity="0.5"/>')  # fmt: skip
        if math.isfinite(std):
            parts.append(f'<line x1="{cx}" y1="{y(mean - std)}" x2="{cx}" y2="{y(mean + std)}" stroke="black"/>')
        for v in rows.loc[rows["level"] == level, "value"].dropna():
            parts.append(f'<circle cx="{cx}" cy="{y(v)}" r="2.2" fill="black"/>')
        parts.append(f'<text x="{cx}" y="{bottom + 12}" text-anchor="middle" font-size="8">{escape(level)}</text>')
        parts.append(f'<text x="{cx}" y="{bottom + 22}" text-anchor="middle" font-size="8">{_fmt(mean)}</text>')
    return parts


def effects_svg(levels: list[str], measures: list[str], measurements: pd.DataFrame, title: str) -> str:
    """The SVG (module docstring) of `measurements` (level, seed, metric, value) for `measures` and `levels`."""
    n_rows = math.ceil(len(measures) / PER_ROW)
    width, height = PANEL_W * min(PER_ROW, len(measures)), PANEL_H * n_rows + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="6" y="14" font-size="12" font-weight="bold">{escape(title)}</text>']  # fmt: skip
    for k, metric in enumerate(measures):
        rows = measurements[measurements["metric"] == metric]
        parts += _panel(metric, levels, rows, PANEL_W * (k % PER_ROW), 20 + PANEL_H * (k // PER_ROW))
    return "\n".join(parts + ["</svg>"]) + "\n"
