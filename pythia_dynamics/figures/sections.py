"""Report sections: a function per analysis, registered by name, from store tables to figures.

A section function receives the scalars (and arrays) of its analysis, already read from one or more
stores, plus the stores' source metadata, and returns a `Section` of plotly figures and HTML notes.
An analysis without a registered section still gets one: a summary of what the store holds for it.

Each section says which arrays it draws (`@section(name, arrays=...)`), so that the report reads only
those: a full-size store (154 checkpoints x 24 layers) holds gigabytes of arrays that no figure shows.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from pythia_dynamics.schedule import select_steps

__all__ = [
    "Section",
    "SectionInputs",
    "animation_steps",
    "line_mode",
    "log_x_toggle",
    "mark_suspect_steps",
    "render_section",
    "array_reads",
    "derived_reads",
    "section",
    "step_slider",
    "stored_suspects",
]


@dataclass
class SectionInputs:
    scalars: pd.DataFrame
    arrays: pd.DataFrame
    source_meta: dict[str, dict]  # model -> what sweep recorded about its source
    # name -> a table the section registered as derived from the stores (`section(derived=...)`), e.g. the SVD
    # agreement, which the report computes once for every section that draws it
    derived: dict[str, pd.DataFrame] = field(default_factory=dict)


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # HTML snippets shown after the figures


_SECTIONS: dict[str, Callable[[SectionInputs], Section]] = {}
# analysis -> the `Store.arrays` filters of the rows its section draws (one read per dict, concatenated); a
# callable gets the section's scalars and returns the filter dicts (e.g. "the last layer only").
ArrayReads = list[dict] | Callable[[pd.DataFrame], list[dict]]
_ARRAY_READS: dict[str, ArrayReads] = {}
# analysis -> {name: a function of the opened stores returning a table}: tables computed from the stores rather
# than read as rows (`SectionInputs.derived`)
DerivedReads = dict[str, Callable[[list], pd.DataFrame]]
_DERIVED_READS: dict[str, DerivedReads] = {}


def section(analysis: str, arrays: ArrayReads | None = None, derived: DerivedReads | None = None):
    """Register a section function for `analysis`. `arrays`: the arrays rows it draws, as `Store.arrays`
    filters (e.g. `[dict(name=["histogram"], component=["W_in"])]`, `[{}]` for all of them); None (the
    default): it draws none, and the report reads no arrays for it. `derived`: tables computed from the
    stores (name -> function of the list of Store objects), given to the section as `inputs.derived[name]`."""

    def decorator(fn: Callable[[SectionInputs], Section]):
        _SECTIONS[analysis] = fn
        if arrays is not None:
            _ARRAY_READS[analysis] = arrays
        if derived is not None:
            _DERIVED_READS[analysis] = derived
        return fn

    return decorator


def derived_reads(analysis: str) -> DerivedReads:
    """The derived tables `analysis`'s section registered (name -> function of the stores); {} for none."""
    return dict(_DERIVED_READS.get(analysis, {}))


def array_reads(analysis: str, scalars: pd.DataFrame) -> list[dict]:
    """The `Store.arrays` filters (besides analysis) of the rows `analysis`'s section draws; [] for none."""
    reads = _ARRAY_READS.get(analysis, [])
    return list(reads(scalars) if callable(reads) else reads)


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


# Points of one figure drawn with markers; beyond this, lines only: every marker is an SVG node, and a
# full-size store's per-block figures (24 blocks x 9 matrices x 154 checkpoints) would take the browser minutes.
MAX_MARKERS = 5000


def line_mode(n_points: int) -> str:
    """"lines+markers" for a figure of at most MAX_MARKERS points, else "lines"."""
    return "lines+markers" if n_points <= MAX_MARKERS else "lines"


def animation_steps(steps, max_frames: int) -> list[int]:
    """All `steps` if few enough, else at most `max_frames` of them evenly spaced in log(1 + step),
    first and last included (the step spec `log:N`; Pythia's schedule is log-spaced early)."""
    steps = sorted({int(s) for s in steps})
    return steps if len(steps) <= max_frames else select_steps(f"log:{max_frames}", steps)


def step_slider(fig: go.Figure, frames: dict[int, list], title_of=None) -> go.Figure:
    """Animate `fig` over checkpoints: `frames` maps step -> the traces at that step (same order and
    count at every step). The figure opens at the last step; `title_of(step)` retitles each frame."""
    steps = sorted(frames)
    fig.add_traces(frames[steps[-1]])
    fig.frames = [
        go.Frame(data=frames[s], name=str(s), layout=dict(title_text=title_of(s)) if title_of else None)
        for s in steps
    ]
    fig.update_layout(
        sliders=[
            dict(
                active=len(steps) - 1, currentvalue=dict(prefix="training step "), pad=dict(t=40),
                steps=[
                    dict(label=str(s), method="animate",
                         args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                              transition=dict(duration=0))])
                    for s in steps
                ],
            )
        ]
    )  # fmt: skip
    if title_of:
        fig.update_layout(title_text=title_of(steps[-1]))
    return fig


def stored_suspects(scalars: pd.DataFrame, arrays: pd.DataFrame | None = None) -> dict[str, dict[int, str]]:
    """{model: {step: reasons, one a line}} of the checkpoints the stored `audit` rows call suspect (docs/audit.md)."""
    rows = scalars[(scalars["analysis"] == "audit") & (scalars["stat"] == "suspect") & (scalars["value"] > 0)]
    reasons = {}
    if arrays is not None and len(arrays):
        texts = arrays[(arrays["analysis"] == "audit") & (arrays["name"] == "reasons")]
        reasons = {(r.model, int(r.step)): "\n".join(r.text) for r in texts.itertuples()}
    found: dict[str, dict[int, str]] = {}
    for row in rows.itertuples():
        found.setdefault(row.model, {})[int(row.step)] = reasons.get((row.model, int(row.step)), "suspect")
    return found


SUSPECT_MARK = dict(color="rgba(214, 39, 40, 0.55)", width=1.5, dash="dot")


def mark_suspect_steps(fig: go.Figure, suspects: dict[str, dict[int, str]]) -> go.Figure:
    """Dotted red vertical lines at suspect checkpoints, on every panel whose x axis is the training step.

    A figure titled "<model>: ..." is marked with that model's suspects, any other with every model's.
    The lines are traces (x in data units), so they stay in place when `log_x_toggle` switches the axis
    to log; each spans the y range of the panel's own traces, and hovering names the audit's reasons.
    """
    title = fig.layout.title.text or ""
    models = [m for m in suspects if title.startswith(f"{m}:")] or list(suspects)
    marks = {step: html.escape(f"{model} step {step}: {why}").replace("\n", "<br>")
             for model in models for step, why in suspects[model].items()}  # fmt: skip
    return mark_steps(fig, marks, SUSPECT_MARK, "suspect checkpoint (audit)", "suspect")


def mark_steps(fig: go.Figure, marks: dict[int, str], line: dict, name: str, group: str) -> go.Figure:
    """Vertical lines at `marks` (step -> hover text) on every panel whose x axis is the training step.

    The lines are traces (x in data units), so they stay in place when `log_x_toggle` switches the axis
    to log; each spans the y range of the panel's own line and bar traces.
    """
    axes = [axis for axis in fig.layout if axis.startswith("xaxis")]
    if not marks or not any((fig.layout[a].title.text or "") == "training step" for a in axes):
        return fig
    panels: dict[tuple[str, str], list[float]] = {}
    for trace in fig.data:
        if getattr(trace, "y", None) is None or trace.type not in ("scatter", "scattergl", "bar") or getattr(trace, "mode", None) == "text":
            continue
        ys = [float(v) for v in trace.y if v is not None and v == v]
        panels.setdefault((trace.xaxis or "x", trace.yaxis or "y"), []).extend(ys)
    for i, ((xaxis, yaxis), ys) in enumerate(sorted(panels.items())):
        if not ys:
            continue
        low, high = min(ys), max(ys)
        x, y, text = [], [], []
        for step, why in sorted(marks.items()):
            x += [step, step, None]
            y += [low, high, None]
            text += [why, why, None]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", line=line, name=name, legendgroup=group,
            showlegend=i == 0, hovertext=text, hoverinfo="text", xaxis=xaxis, yaxis=yaxis,
        ))  # fmt: skip
    return fig
