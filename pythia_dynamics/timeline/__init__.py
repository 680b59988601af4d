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

__all__ = ["EventsResult", "detect", "events", "read_series", "trajectories", "trajectory_summary"]

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


def trajectories(stores, model=None, *, series="all", train_fraction: float = 0.7, max_series: int = 24,
                 sample: int | None = None) -> pd.DataFrame:  # fmt: skip
    """Held-out validation of the trajectory families (`pythia_dynamics.timeline.curves`) on the series of `stores`.

    `series`: "all" (default), every scalar series of every model, fitted together (`curves.held_out_many`);
    "headline", the study's headline quantities (`headline_series`: the evaluation loss, the norms of W_in,
    W_out, W_U, the residual outlier, ..., means over layers and heads) and then one per group, at most
    `max_series`; or a list of dicts of key filters (e.g. `[{"analysis": "eval_loss", "stat": "loss"}]`),
    each selecting the mean of the series it matches. One row per (model, series, family) and one per
    (model, series) for the AICc choice (family "chosen: <name>"), with the series' group, nrmse (held-out
    RMSE / the series' range), coverage of the 95% band, AICc and the last fitted step.

    `stores` may also be a list of `ModelSeries` already read (`read_series`; `EventsResult.series`), so that a
    caller holding them does not read the stores again. `sample` fits, of "all", at most that many series per
    model, evenly spaced in the series order (every series when None).
    """
    import numpy as np

    from pythia_dynamics.timeline.curves import held_out_many

    if isinstance(stores, list) and stores and all(isinstance(s, ModelSeries) for s in stores):
        read = [s for s in stores if model is None or s.model in ([model] if isinstance(model, str) else model)]
    else:
        read = read_series(stores, model=model, svd_agreement=False)
    rows = []
    for model_series in read:
        if isinstance(series, str) and series == "all":
            keep = np.arange(len(model_series.keys))
            if sample is not None and len(keep) > sample:
                keep = np.unique(np.linspace(0, len(keep) - 1, sample).round().astype(int))
            labels = [model_series.label(i) for i in keep]
            groups = model_series.keys["group"].to_numpy()[keep].tolist()
            steps, matrix = model_series.steps, model_series.values[keep]
        else:
            chosen = headline_series(model_series, None if series == "headline" else series, max_series)
            if not chosen:
                continue
            labels, groups = [c[0] for c in chosen], [c[3] for c in chosen]
            steps, matrix = model_series.steps, np.array([c[4] for c in chosen])
        try:
            table = held_out_many(steps, matrix, train_fraction)
        except ValueError as error:
            log.warning("%s: %s", model_series.model, error)
            continue
        table.insert(0, "group", np.asarray(groups, dtype=object)[table["index"]])
        table.insert(0, "series", np.asarray(labels, dtype=object)[table["index"]])
        table.insert(0, "model", model_series.model)
        rows.append(table.drop(columns="index"))
    if not rows:
        return pd.DataFrame(columns=["model", "series", "group", "family", "nrmse", "coverage", "aicc", "train_until_step"])
    return pd.concat(rows, ignore_index=True)


def trajectory_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, group, family), over the series of a `trajectories` table: how many were fitted, the median
    and 90th percentile of the held-out error, the median band coverage, and how often AICc chose the family."""
    if table.empty:
        return pd.DataFrame(columns=["model", "group", "family", "series", "median_nrmse", "p90_nrmse", "coverage", "chosen"])
    chosen = table["family"].str.startswith("chosen: ")
    fits = table[~chosen]
    summary = fits.groupby(["model", "group", "family"], sort=True).agg(
        series=("nrmse", "count"), median_nrmse=("nrmse", "median"),
        p90_nrmse=("nrmse", lambda v: v.quantile(0.9)), coverage=("coverage", "median"),
    )  # fmt: skip
    picks = table[chosen].assign(family=lambda t: t["family"].str.removeprefix("chosen: "))
    summary["chosen"] = picks.groupby(["model", "group", "family"]).size().reindex(summary.index).fillna(0).astype(int)
    choice = picks.assign(family="chosen by AICc").groupby(["model", "group", "family"]).agg(
        series=("nrmse", "count"), median_nrmse=("nrmse", "median"),
        p90_nrmse=("nrmse", lambda v: v.quantile(0.9)), coverage=("coverage", "median"),
    )  # fmt: skip
    choice["chosen"] = choice["series"]
    return pd.concat([summary, choice]).sort_index().reset_index()


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
    """(label, steps, values, group, values at every step) of the series to fit: those matching `filters`
    (each a dict of key values; the mean over the series it matches), by default the `HEADLINE` quantities
    present, then the first (analysis, component, stat) of each group. `steps` and `values` are where the
    mean is finite; the last item has NaN where it is not (at `series.steps`)."""
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
        groups = series.keys["group"][mask].unique()
        out.append((label, series.steps[keep], values[keep], groups[0] if len(groups) == 1 else "mixed", values))
    return out
