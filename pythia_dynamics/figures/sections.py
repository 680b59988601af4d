"""Report sections: a function per analysis, registered by name, from store tables to figures.

A section function receives the scalars (and arrays) of its analysis, already read from one or more
stores, plus the stores' source metadata, and returns a `Section` of plotly figures and HTML notes.
An analysis without a registered section still gets one: a summary of what the store holds for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

__all__ = ["Section", "SectionInputs", "log_x_toggle", "render_section", "section"]


@dataclass
class SectionInputs:
    scalars: pd.DataFrame
    arrays: pd.DataFrame
    source_meta: dict[str, dict]  # model -> what sweep recorded about its source


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # HTML snippets shown after the figures


_SECTIONS: dict[str, Callable[[SectionInputs], Section]] = {}


def section(analysis: str):
    def decorator(fn: Callable[[SectionInputs], Section]):
        _SECTIONS[analysis] = fn
        return fn

    return decorator


def render_section(analysis: str, inputs: SectionInputs) -> Section:
    if analysis in _SECTIONS:
        return _SECTIONS[analysis](inputs)
    return _summary_section(analysis, inputs)


def _summary_section(analysis: str, inputs: SectionInputs) -> Section:
    s = inputs.scalars
    table = (
        s.groupby(["model", "component", "stat"], dropna=False)["step"]
        .agg(checkpoints="nunique", first="min", last="max")
        .reset_index()
    )
    return Section(
        title=analysis,
        intro="No figures are registered for this analysis yet; this is what the store holds for it.",
        notes=[table.to_html(index=False, border=0, classes="summary")],
    )


def log_x_toggle(fig: go.Figure) -> go.Figure:
    """Buttons to switch every x axis between linear and log (Pythia's schedule is log-spaced early)."""
    axes = [name for name in fig.layout if name.startswith("xaxis")] or ["xaxis"]
    fig.update_layout(
        updatemenus=[
            dict(
                type="buttons", direction="left", x=1.0, xanchor="right", y=1.12, yanchor="bottom",
                buttons=[
                    dict(label="linear x", method="relayout", args=[{f"{a}.type": "linear" for a in axes}]),
                    dict(label="log x", method="relayout", args=[{f"{a}.type": "log" for a in axes}]),
                ],
            )
        ]
    )  # fmt: skip
    return fig
