"""Events (steps where many series change together), phases between them, and events aligned across models.

Definitions (docs/events.md):

- **change points**: `changepoints.detect` on every series of a model (its finite values only).
- **event**: a checkpoint c and the series with a change point within `tolerance` checkpoints of it
  (each series counted once). Its *share* is the mean, over the model's groups (weights, activations,
  gradients, loss, svd agreement, circuits, ...), of the fraction of that group's series taking part, so
  an event seen across several kinds of quantity outranks one seen in many series of one kind. Events are
  found greedily: the window with the largest share (ties: more series, then the larger sum of the change
  points' |jump|, then the earlier checkpoint) is re-centred on the earliest checkpoint in it whose
  change points' sum of |jump| is at least half the largest such sum; that is an event; its change points are removed, and so on while at least `min_series` series remain in a
  window. Rank 1 is the first found. (A jump between checkpoints k and k + 1 gives changes at both, so
  one event at k.)
- **phases**: training cut at the `n_cuts` highest-ranked events; in each phase every series' change
  (value at the phase's last checkpoint - at its first) / (the series' range over training) says what
  rises and falls (series taking fewer than 4 distinct values, codes and small counts, are not named).
- **aligned events**: the `top` events of each model on the fraction of training (step / the model's final
  step), grouped greedily strongest first: an event joins a group whose mean fraction is within a factor
  exp(`align_tolerance`) of its own (fractions below 0.001 count as 0.001) and which holds no event of its
  model yet. The spread is the standard deviation of the fractions.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pythia_dynamics.timeline.changepoints import MIN_POINTS, changes_of_increments, detect, normalised_increments_many
from pythia_dynamics.timeline.series import ModelSeries

__all__ = ["align_events", "find_changepoints", "find_events", "find_phases"]

log = logging.getLogger(__name__)

CHANGEPOINT_COLUMNS = ["model", "series", "analysis", "component", "layer", "head", "stat", "group",
                       "index", "step", "log_step", "fraction", "jump"]  # fmt: skip


def find_changepoints(series: ModelSeries, penalty: float | None = None, progress: bool = False) -> pd.DataFrame:
    """One row per change point of every series of one model (columns `CHANGEPOINT_COLUMNS`)."""
    found_series, found_index, found_jump = [], [], []
    finite = np.isfinite(series.values)
    # Series with a value at every checkpoint (most) get their increments in one batch.
    whole = np.flatnonzero(finite.all(axis=1)) if len(series.steps) >= MIN_POINTS else np.zeros(0, dtype=np.int64)
    batched = dict(zip(whole, normalised_increments_many(series.steps, series.values[whole]), strict=True)) if len(whole) else {}
    for i in tqdm(range(len(series.values)), desc=f"change points {series.model}", disable=not progress):
        keep = finite[i]
        if keep.sum() < 2:
            continue
        where = np.flatnonzero(keep)
        if i in batched:
            cp = changes_of_increments(batched[i], len(series.steps), penalty)
        else:
            cp = detect(series.steps[keep], series.values[i, keep], penalty)
        found_series.append(np.full(len(cp.index), i))
        found_index.append(where[cp.index])  # back to the model's checkpoint grid
        found_jump.append(cp.jump)
    rows = np.concatenate(found_series or [np.zeros(0, int)]).astype(np.int64)
    index = np.concatenate(found_index or [np.zeros(0, int)]).astype(np.int64)
    table = series.keys.iloc[rows].reset_index(drop=True)
    table.insert(0, "series", rows)
    table.insert(0, "model", series.model)
    table["index"] = index
    table["step"] = series.steps[index]
    table["log_step"] = np.log1p(table["step"].to_numpy(dtype=np.float64))
    table["fraction"] = table["step"] / max(series.final_step, 1)
    table["jump"] = np.concatenate(found_jump or [np.zeros(0)])
    return table[CHANGEPOINT_COLUMNS]


def find_events(series: ModelSeries, changepoints: pd.DataFrame, tolerance: int = 1, min_series: int = 2) -> pd.DataFrame:
    """Ranked events of one model from its change points (module docstring). One row per event: rank,
    step (the centre checkpoint), step_low/step_high (its change points' extent), fraction, share,
    n_series, n_groups, and `series_<group>` counts."""
    groups = sorted(series.keys["group"].unique())
    group_code = series.keys["group"].map({g: j for j, g in enumerate(groups)}).to_numpy()
    group_size = np.bincount(group_code, minlength=len(groups)).astype(np.float64)
    cp_series = changepoints["series"].to_numpy()
    cp_index = changepoints["index"].to_numpy()
    cp_size = np.abs(changepoints["jump"].to_numpy())
    alive = np.ones(len(cp_series), dtype=bool)
    n_steps = len(series.steps)
    events = []
    while alive.any():
        best = None
        for c in np.unique(cp_index[alive]):
            window = alive & (np.abs(cp_index - c) <= tolerance)
            members = np.unique(cp_series[window])
            per_group = np.bincount(group_code[members], minlength=len(groups))
            share = float(np.mean(per_group / group_size))
            score = (share, len(members), float(cp_size[window].sum()))
            if best is None or score > best_score:
                best, best_score, members_best, per_group_best = (c, share, window), score, members, per_group
        c, share, window = best
        if len(members_best) < min_series:
            break
        # Centre the event where its change points are large (a few stray changes of other series in the
        # window must not pull it off the checkpoint where the series change): the earliest checkpoint
        # with at least half the largest sum of |jump|, so that a jump between k and k + 1 (changes of
        # about equal size at both) is placed at k.
        sizes = np.bincount(cp_index[window], weights=cp_size[window])
        c = int(np.flatnonzero(sizes >= 0.5 * sizes.max())[0])
        window = alive & (np.abs(cp_index - c) <= tolerance)
        members_best = np.unique(cp_series[window])
        per_group_best = np.bincount(group_code[members_best], minlength=len(groups))
        share = float(np.mean(per_group_best / group_size))
        steps_in = series.steps[cp_index[window]]
        event = {"model": series.model, "rank": len(events) + 1, "step": int(series.steps[c]), "index": int(c),
                 "step_low": int(steps_in.min()), "step_high": int(steps_in.max()),
                 "fraction": series.steps[c] / max(series.final_step, 1), "share": share,
                 "n_series": len(members_best), "n_groups": int((per_group_best > 0).sum())}  # fmt: skip
        event |= {f"series_{g}": int(n) for g, n in zip(groups, per_group_best)}
        events.append(event)
        alive &= ~window
        if len(events) >= n_steps:
            break
    columns = ["model", "rank", "step", "index", "step_low", "step_high", "fraction", "share", "n_series", "n_groups"]
    return pd.DataFrame(events, columns=columns + [f"series_{g}" for g in groups])


def find_phases(series: ModelSeries, events: pd.DataFrame, n_cuts: int = 3, n_named: int = 3,
                threshold: float = 0.1) -> pd.DataFrame:  # fmt: skip
    """Training cut at the `n_cuts` highest-ranked events (module docstring). One row per phase: phase,
    start_step, end_step, rising / falling (the `n_named` series that rise / fall most, as labels), and per
    group the share of its series that rise (`rise_<group>`) and fall (`fall_<group>`) by more than
    `threshold` of their range."""
    strongest = events.sort_values("rank").head(n_cuts)["index"]
    cut_index = sorted({int(i) for i in strongest} - {0, len(series.steps) - 1})
    bounds = [0, *cut_index, len(series.steps) - 1]
    values = _filled(series.values)
    with np.errstate(invalid="ignore"):
        spread = np.ptp(values, axis=1)  # NaN for a series with no value at all
    spread[~(spread > 0)] = np.nan
    nameable = _distinct_values(series.values) >= 4  # not codes, flags or small counts
    groups = sorted(series.keys["group"].unique())
    group = series.keys["group"].to_numpy()
    rows = []
    for phase, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        change = (values[:, b] - values[:, a]) / spread
        named = np.where(np.isfinite(change) & nameable, change, 0.0)
        ranked = np.argsort(named, kind="stable")
        row = {"model": series.model, "phase": phase, "start_step": int(series.steps[a]), "end_step": int(series.steps[b]),
               "rising": _names(series, ranked[::-1][:n_named], named, +1),
               "falling": _names(series, ranked[:n_named], named, -1)}  # fmt: skip
        for g in groups:
            in_group = change[group == g]
            n = max(np.isfinite(in_group).sum(), 1)
            row[f"rise_{g}"] = float((in_group > threshold).sum() / n)
            row[f"fall_{g}"] = float((in_group < -threshold).sum() / n)
        rows.append(row)
    return pd.DataFrame(rows)


def _distinct_values(values: np.ndarray) -> np.ndarray:
    """How many different finite values each series takes."""
    ordered = np.sort(np.where(np.isfinite(values), values, np.inf), axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf past a series' last value
        new = np.diff(ordered, axis=1) != 0
    return np.isfinite(ordered[:, 0]).astype(int) + (new & np.isfinite(ordered[:, 1:])).sum(axis=1)


def _filled(values: np.ndarray) -> np.ndarray:
    """Each series' missing checkpoints filled with its previous (then next) value, for phase ends."""
    frame = pd.DataFrame(values.T)
    return frame.ffill().bfill().to_numpy().T


def _names(series: ModelSeries, order: np.ndarray, change: np.ndarray, sign: int) -> str:
    picked = [i for i in order if sign * change[i] > 0]
    return "; ".join(f"{series.label(i)} ({change[i]:+.2f})" for i in picked)


def align_events(events: pd.DataFrame, top: int = 5, tolerance: float = 0.5) -> pd.DataFrame:
    """Events of several models grouped on the fraction of training (module docstring). One row per
    aligned event: aligned (1 = seen in most models), n_models, fraction_mean, fraction_std,
    fraction_min, fraction_max, share_mean, and `members` ('model: step (rank r)', ...)."""
    candidates = events[events["rank"] <= top].sort_values(["share", "n_series"], ascending=False)
    groups: list[dict] = []
    for row in candidates.itertuples():
        where = np.log(max(row.fraction, 1e-3))
        for group in groups:
            if row.model not in group["models"] and abs(np.mean(group["log"]) - where) <= tolerance:
                break
        else:
            group = {"models": [], "log": [], "rows": []}
            groups.append(group)
        group["models"].append(row.model)
        group["log"].append(where)
        group["rows"].append(row)
    table = []
    for group in groups:
        fractions = np.array([r.fraction for r in group["rows"]])
        table.append({
            "n_models": len(group["models"]), "fraction_mean": fractions.mean(),
            "fraction_std": fractions.std(ddof=1) if len(fractions) > 1 else 0.0,
            "fraction_min": fractions.min(), "fraction_max": fractions.max(),
            "share_mean": float(np.mean([r.share for r in group["rows"]])),
            "members": ", ".join(f"{r.model}: {r.step} (rank {r.rank})" for r in group["rows"]),
        })  # fmt: skip
    columns = ["n_models", "fraction_mean", "fraction_std", "fraction_min", "fraction_max", "share_mean", "members"]
    out = pd.DataFrame(table, columns=columns).sort_values(["n_models", "share_mean"], ascending=False, kind="stable")
    out.insert(0, "aligned", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)
