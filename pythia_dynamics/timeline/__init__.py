"""Events across training: change points of every scalar series of a store, events where many series change
together, phases between them, the same events aligned across models or seeds, and trajectory models that
predict later checkpoints (docs/events.md). Reads stores only; no model is loaded, and torch is not imported.

    import pythia_dynamics as pdyn
    result = pdyn.events("store/")             # or a list of stores: events aligned across their models
    result.events.head()                       # ranked events; result.phases, result.changepoints, result.aligned
    print(result.table())
    pythia_dynamics.timeline.trajectories("store/")   # curve fits, held-out prediction error
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import pandas as pd

from pythia_dynamics.timeline.changepoints import detect
from pythia_dynamics.timeline.detect import align_events, find_changepoints, find_events, find_phases
from pythia_dynamics.timeline.series import ModelSeries, read_series

__all__ = ["EventsResult", "detect", "events", "read_series", "trajectories"]

log = logging.getLogger(__name__)


@dataclass
class EventsResult:
    """What `events` found. Tables (pandas): `changepoints` (one row per change point of a series),
    `events` (ranked per model), `phases` (per model), `aligned` (events across models; empty for one
    model). `n_series`: series looked at per model."""

    changepoints: pd.DataFrame
    events: pd.DataFrame
    phases: pd.DataFrame
    aligned: pd.DataFrame
    n_series: dict[str, int] = field(default_factory=dict)
    series: list[ModelSeries] = field(default_factory=list, repr=False)

    def table(self, top: int = 10) -> str:
        """The ranked events, phases and (for several models) aligned events, as text."""
        lines = []
        for model in self.n_series:
            rows = self.events[self.events["model"] == model]
            n_cp = int((self.changepoints["model"] == model).sum())
            lines.append(f"{model}: {self.n_series.get(model, 0)} series, {n_cp} change points, {len(rows)} events")
            groups = [c for c in rows.columns if c.startswith("series_")]
            shown = rows.head(top)[["rank", "step", "step_low", "step_high", "fraction", "share", "n_series", *groups]]
            shown = shown.rename(columns={c: c.removeprefix("series_") for c in groups})
            lines += [shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"), ""]
            phases = self.phases[self.phases["model"] == model]
            for phase in phases.itertuples():
                lines.append(f"  phase {phase.phase}: steps {phase.start_step}-{phase.end_step}")
                lines.append(f"    rising:  {phase.rising or '-'}")
                lines.append(f"    falling: {phase.falling or '-'}")
            lines.append("")
        if len(self.aligned):
            lines.append("events aligned across models (fraction of training = step / final step):")
            lines.append(self.aligned.head(top).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        return "\n".join(lines)


def events(stores, model=None, *, penalty: float | None = None, tolerance: int = 1, min_series: int = 2,
           n_cuts: int = 3, align_top: int = 5, align_tolerance: float = 0.5, progress: bool = False) -> EventsResult:  # fmt: skip
    """Change points, events, phases and aligned events of every scalar series in `stores` (a Store, a
    store path, or a list of them); `model` restricts to one model or a list. `penalty` overrides the
    calibrated change-point penalty; `tolerance` (checkpoints) and `min_series` define an event; `n_cuts`
    events cut training into phases; `align_top` events per model are aligned across models within a
    factor exp(`align_tolerance`) of the fraction of training. Definitions: docs/events.md."""
    all_series = read_series(stores, model=model)
    changepoints, ranked, phases = [], [], []
    for series in all_series:
        found = find_changepoints(series, penalty=penalty, progress=progress)
        model_events = find_events(series, found, tolerance=tolerance, min_series=min_series)
        changepoints.append(found)
        ranked.append(model_events)
        phases.append(find_phases(series, model_events, n_cuts=n_cuts))
        log.info("%s: %d series, %d change points, %d events", series.model, len(series.keys), len(found), len(model_events))
    ranked_all = pd.concat(ranked, ignore_index=True)
    aligned = align_events(ranked_all, top=align_top, tolerance=align_tolerance) if len(all_series) > 1 else pd.DataFrame()
    return EventsResult(
        changepoints=pd.concat(changepoints, ignore_index=True), events=ranked_all,
        phases=pd.concat(phases, ignore_index=True), aligned=aligned,
        n_series={s.model: len(s.keys) for s in all_series}, series=all_series,
    )  # fmt: skip


def trajectories(stores, model=None, *, series=None, train_fraction: float = 0.7, max_series: int = 24) -> pd.DataFrame:
    """Held-out validation of the trajectory families (`pythia_dynamics.timeline.curves`) on summary series of `stores`.

    `series`: a list of dicts of key filters (e.g. `[{"analysis": "eval_loss", "stat": "loss"}]`), each
    selecting series to fit; default `headline_series`: the evaluation loss, and per (analysis, component,
    stat) of each group the mean over layers and heads of the first few. One row per (model, series,
    family) with nrmse (held-out RMSE / the series' range), coverage of the 95% band, and AICc.
    """
    from pythia_dynamics.timeline.curves import held_out

    rows = []
    for model_series in read_series(stores, model=model, svd_agreement=False):
        for label, steps, values in headline_series(model_series, series, max_series):
            try:
                table = held_out(steps, values, train_fraction)
            except ValueError as error:
                log.warning("%s %s: %s", model_series.model, label, error)
                continue
            table.insert(0, "series", label)
            table.insert(0, "model", model_series.model)
            rows.append(table)
    if not rows:
        return pd.DataFrame(columns=["model", "series", "family", "nrmse", "coverage", "aicc", "train_until_step"])
    return pd.concat(rows, ignore_index=True)


# The study's headline quantities, fitted first when present (means over layers and heads).
HEADLINE = [
    {"analysis": "eval_loss", "stat": "loss"},
    {"analysis": "weight_norms", "component": "W_in", "stat": "frobenius_norm"},
    {"analysis": "weight_norms", "component": "W_out", "stat": "frobenius_norm"},
    {"analysis": "weight_norms", "component": "W_U", "stat": "frobenius_norm"},
    {"analysis": "residual_outliers", "component": "hook_resid_post", "stat": "max_abs"},
    {"analysis": "massive_activations", "component": "hook_resid_post", "stat": "top1_abs"},
    {"analysis": "gradients", "component": "W_out", "stat": "grad_frobenius_norm"},
    {"analysis": "weight_norms", "component": "ln_final.w", "stat": "frobenius_norm"},
]


def headline_series(series: ModelSeries, filters=None, max_series: int = 24):
    """(label, steps, values) of the series to fit: those matching `filters` (each a dict of key values;
    the mean over the series it matches), by default the `HEADLINE` quantities present, then the first
    (analysis, component, stat) of each group."""
    import numpy as np

    keys = series.keys
    if filters is None:
        filters = list(HEADLINE)
        for _, rows in keys.drop_duplicates(["analysis", "component", "stat"]).groupby("group", sort=True):
            row = rows.iloc[0]
            filters.append({"analysis": row["analysis"], "component": row["component"], "stat": row["stat"]})
    out, masks = [], []
    for wanted in filters:
        if len(out) == max_series:
            break
        mask = np.ones(len(keys), dtype=bool)
        for column, value in wanted.items():
            mask &= (keys[column] == value).fillna(False).to_numpy()
        if not mask.any() or any(np.array_equal(mask, seen) for seen in masks):
            continue  # nothing there, or the same series as an earlier filter
        masks.append(mask)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a checkpoint where none of them has a value
            values = np.nanmean(series.values[mask], axis=0)
        keep = np.isfinite(values)
        label = " ".join(str(v) for v in wanted.values()) + (" (mean)" if mask.sum() > 1 else "")
        out.append((label, series.steps[keep], values[keep]))
    return out
