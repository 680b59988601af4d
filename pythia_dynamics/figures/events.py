"""The report's Events section: the event timeline over the loss curve, change points by group, ranked events,
phases, events aligned across models, and the held-out prediction error of the trajectory models.

Not an analysis (it is computed from every scalar series of the stores), so it is not registered with
`@section`; report.py calls `events_section(stores)`.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.figures.sections import Section, log_x_toggle, mark_steps

__all__ = ["EventsSection", "analysis_change_marks", "events_section", "mark_changes", "mark_events", "per_group_sample",
           "timeline_figure"]

log = logging.getLogger(__name__)

MARKED_EVENTS = 5
EVENT_MARK = dict(color="rgba(255, 127, 14, 0.6)", dash="dash", width=1)
MARKED_CHANGES = 3  # per figure: the checkpoints where most of its own analysis's series change
CHANGE_MARK = dict(color="rgba(148, 103, 189, 0.75)", dash="dot", width=1)
# Series read under another name than the section that draws them.
SECTION_OF = {"svd_agreement": "svd_directions"}
# The report's table of every series' held-out error fits at most this many series of each group per model
# (evenly spaced in the series order, so every group and its analyses are in it; `pythia-dynamics events --fit`
# fits them all): a full-size store has ~39,000 series per model, and fitting them is minutes.
SUMMARY_SERIES_PER_GROUP = 500


@dataclass
class EventsSection(Section):
    marks: dict[str, dict[int, str]] = field(default_factory=dict)  # model -> step -> what happens there
    # analysis (section) -> model -> step -> how many of its series change there
    changes: dict[str, dict[str, dict[int, str]]] = field(default_factory=dict)


def events_section(stores, fit_series: int = 6) -> EventsSection | None:
    """The section for `stores` (Store objects or paths); None when they hold no scalar series."""
    from pythia_dynamics.timeline import events, trajectories, trajectory_summary

    try:
        result = events(stores)
    except ValueError as error:
        log.info("no events section: %s", error)
        return None
    figures = [timeline_figure(series, result) for series in result.series]
    notes = [_table("Ranked events", _events_table(result)), _table("Phases", _phases_table(result))]
    if len(result.aligned):
        notes.append(_table("Events aligned across models (fraction of training = step / final step)", result.aligned))
    # The series events() read, not a second and third read of the stores (a full-size store has millions
    # of scalar rows); less the SVD agreement series, which `timeline.trajectories` does not fit.
    fitted = [_without_svd_agreement(series) for series in result.series]
    errors = trajectories(fitted, series="headline", max_series=fit_series)
    if len(errors):
        notes.append(_table("Held-out prediction error of the headline series (fit on the first 70% of checkpoints; "
                            "RMSE / the series' range, per curve family, and of the family AICc chooses)", _error_table(errors)))  # fmt: skip
    sampled = [per_group_sample(series, SUMMARY_SERIES_PER_GROUP) for series in fitted]
    every = trajectory_summary(trajectories(sampled, series="all"))
    if len(every):
        cut = any(len(a.keys) < len(b.keys) for a, b in zip(sampled, fitted))
        notes.append(_table("Held-out prediction error of every series, per group: how many series, the median and "
                            "90th-percentile error of each family, its median band coverage, and how often AICc "
                            "chose it" + (f" (at most {SUMMARY_SERIES_PER_GROUP:,} series of each group per model, evenly "
                            "spaced: `pythia-dynamics events --fit` fits them all)" if cut else ""), every))  # fmt: skip
    intro = (
        "Change points of every scalar series on the log(1 + step) axis (ruptures' exact penalised "
        "segmentation; a series of pure noise gets one in under 5% of cases), events where many series change "
        "together, ranked by the share of each group of series taking part, and the phases between the "
        f"strongest events. The {MARKED_EVENTS} strongest events of each model are marked; definitions in "
        "docs/events.md."
    )
    marks = {}
    for event in result.events[result.events["rank"] <= MARKED_EVENTS].itertuples():
        groups = [c.removeprefix("series_") for c in result.events.columns
                  if c.startswith("series_") and getattr(event, c, 0) > 0]  # fmt: skip
        marks.setdefault(event.model, {})[int(event.step)] = (
            f"event E{event.rank}: {event.n_series} series change ({', '.join(groups)})"
        )
    for fig in figures:
        mark_events(fig, marks)
    return EventsSection("Events and phases", intro=intro, figures=figures, notes=notes, marks=marks,
                         changes=analysis_change_marks(result))  # fmt: skip


def per_group_sample(series, per_group: int):
    """`series` (a ModelSeries) with at most `per_group` series of each group, evenly spaced in the series
    order within the group (first and last included), so that every group is represented."""
    from pythia_dynamics.timeline.series import ModelSeries

    groups = series.keys["group"].to_numpy()
    keep = []
    for group in pd.unique(groups):
        where = np.flatnonzero(groups == group)
        if len(where) > per_group:
            where = where[np.unique(np.linspace(0, len(where) - 1, per_group).round().astype(int))]
        keep.append(where)
    keep = np.sort(np.concatenate(keep)) if keep else np.arange(0)
    if len(keep) == len(groups):
        return series
    return ModelSeries(series.model, series.steps, series.keys.iloc[keep].reset_index(drop=True), series.values[keep])


def _without_svd_agreement(series):
    from pythia_dynamics.timeline.series import ModelSeries

    keep = (series.keys["analysis"] != "svd_agreement").to_numpy()
    return ModelSeries(series.model, series.steps, series.keys[keep].reset_index(drop=True), series.values[keep])


def analysis_change_marks(result, top: int = MARKED_CHANGES, min_share: float = 0.1) -> dict[str, dict[str, dict[int, str]]]:
    """Section -> model -> step -> hover text: the `top` checkpoints where the most series of the section's
    analysis have a change point, where at least `min_share` of them do (each figure's own change points;
    `mark_changes`)."""
    out: dict[str, dict[str, dict[int, str]]] = {}
    for series in result.series:
        sizes = series.keys.groupby("analysis").size()
        found = result.changepoints[result.changepoints["model"] == series.model]
        for analysis, rows in found.groupby("analysis", sort=True):
            counts = rows.groupby("step")["series"].nunique().sort_values(ascending=False, kind="stable").head(top)
            counts = counts[counts >= min_share * sizes[analysis]]
            out.setdefault(SECTION_OF.get(analysis, analysis), {})[series.model] = {
                int(step): f"change points: {n} of the {sizes[analysis]} {analysis} series change here"
                for step, n in counts.items()
            }
    return out


def mark_changes(fig: go.Figure, section: str, events: EventsSection) -> go.Figure:
    """Dotted purple vertical lines where the most series of `section`'s own analysis change (of the figure's
    model, or of every model)."""
    return _mark_by_model(fig, events.changes.get(section, {}), CHANGE_MARK,
                          "change points of this section's series (pythia-dynamics events)", "changes")  # fmt: skip


def mark_events(fig: go.Figure, marks: dict[str, dict[int, str]]) -> go.Figure:
    """Dashed orange vertical lines at the strongest events, on every panel whose x axis is the training step.

    A figure titled "<model>: ..." is marked with that model's events, any other with every model's. The
    lines are traces (x in data units), so they stay in place when the x axis switches to log.
    """
    return _mark_by_model(fig, marks, EVENT_MARK, "event (pythia-dynamics events)", "event")


def _mark_by_model(fig: go.Figure, marks: dict[str, dict[int, str]], line: dict, name: str, group: str) -> go.Figure:
    title = fig.layout.title.text or ""
    models = [m for m in marks if title.startswith(f"{m}:")] or list(marks)
    where: dict[int, str] = {}
    for model in models:
        for step, why in marks[model].items():
            text = why if len(models) == 1 else f"{model}: {why}"
            where[step] = f"{where[step]}<br>{text}" if step in where else text
    return mark_steps(fig, where, line, name, group)


def timeline_figure(series, result) -> go.Figure:
    """One model: the loss (or, without eval_loss, the number of change points) with the strongest events
    marked, over change points per checkpoint and group."""
    model = series.model
    changepoints = result.changepoints[result.changepoints["model"] == model]
    ranked = result.events[result.events["model"] == model].head(MARKED_EVENTS)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.55, 0.45], vertical_spacing=0.06,
                        subplot_titles=["evaluation loss and events", "change points per checkpoint"])  # fmt: skip
    loss = (series.keys["analysis"] == "eval_loss") & (series.keys["stat"] == "loss")
    if loss.any():
        values = series.values[loss.to_numpy()][0]
        keep = np.isfinite(values)
        fig.add_trace(go.Scatter(x=series.steps[keep], y=values[keep], mode="lines+markers", name="loss",
                                 line=dict(color="black")), row=1, col=1)  # fmt: skip
    for group, rows in changepoints.groupby("group", sort=True):
        counts = rows.groupby("step")["series"].nunique()
        fig.add_trace(go.Bar(x=counts.index, y=counts.values, name=group), row=2, col=1)
    if len(ranked):  # labels on top of each marked event's bar
        heights = changepoints.groupby(["step", "group"])["series"].nunique().groupby("step").sum()
        fig.add_trace(go.Scatter(x=ranked["step"], y=heights.reindex(ranked["step"]).fillna(0).to_numpy() * 1.08,
                                 mode="text", text=[f"E{r}" for r in ranked["rank"]], textfont=dict(color="darkorange"),
                                 showlegend=False, hoverinfo="skip"), row=2, col=1)  # fmt: skip
    fig.update_layout(title=f"{model}: events over training", barmode="stack", height=600, legend_title="group")
    fig.update_xaxes(title_text="training step", row=2, col=1)
    return log_x_toggle(fig)


def _error_table(errors: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, series): the held-out error of each family, the AICc choice and its error."""
    chosen = errors["family"].str.startswith("chosen: ")
    table = errors[~chosen].pivot_table(index=["model", "series"], columns="family", values="nrmse", aggfunc="first", dropna=False)
    picks = errors[chosen].set_index(["model", "series"])
    table["chosen"] = picks["family"].str.removeprefix("chosen: ")
    table["chosen error"] = picks["nrmse"]
    table["band coverage"] = picks["coverage"]
    return table.reset_index()


def _events_table(result) -> pd.DataFrame:
    table = result.events.groupby("model", sort=True).head(10).drop(columns=["index"])
    return table.rename(columns={c: c.removeprefix("series_") for c in table.columns if c.startswith("series_")})


def _phases_table(result) -> pd.DataFrame:
    return result.phases[["model", "phase", "start_step", "end_step", "rising", "falling"]]


def _table(title: str, table: pd.DataFrame) -> str:
    body = table.to_html(index=False, border=0, classes="summary", float_format=lambda v: f"{v:.3g}")
    return f"<h3>{html.escape(title)}</h3>{body}"
