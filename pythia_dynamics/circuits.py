"""When did a circuit form: the step each head score or massive-activation series changes, from the store alone.

For one series (steps s_1 < ... < s_n, values v_1..v_n; one model, analysis, component, layer, head, stat):
- `initial` = v_1, `final` = v_n, `change` = final - initial; the series *rises* if change >= 0;
- half-way: `half_step` is the first step whose value has crossed the half-way level
  (initial + final) / 2 (at or above it for a rising series, at or below for a falling one), and
  `half_step_before` the step stored just before it: the series crossed between the two. For a series
  that starts at 0 this is the step where it crosses half its final value;
- steepest change on a log step axis: between consecutive checkpoints, the slope
  (v_{i+1} - v_i) / (ln(1 + s_{i+1}) - ln(1 + s_i)) (1 + step, because Pythia's schedule starts at 0
  and is log-spaced early); `steepest_from` / `steepest_to` bound the interval whose slope is largest
  in the direction of the change, and `steepest_slope` is that slope (per unit of ln(1 + step)).
A series with fewer than two checkpoints, or with no change (final == initial), has no formation
step (NaN; NA in the table).

`FORMATION_STATS` are the series tabled by default: every head score of `head_scores` except the
entropy, and each block's largest massive activation (`top1_abs`) and its ratio to the median.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["FORMATION_STATS", "describe", "formation", "formation_of_series"]

FORMATION_STATS = {
    "head_scores": ("induction_score", "prev_token_score", "duplicate_token_score", "sink_share"),
    "massive_activations": ("top1_abs", "top1_ratio"),
}
_SERIES = ["model", "analysis", "component", "layer", "head", "stat"]
_COLUMNS = ["initial", "final", "change", "half_step_before", "half_step", "steepest_from", "steepest_to", "steepest_slope"]


def formation_of_series(steps, values) -> dict:
    """The formation columns (see the module docstring) of one series."""
    order = np.argsort(np.asarray(steps, dtype=np.int64), kind="stable")
    s, v = np.asarray(steps, dtype=np.int64)[order], np.asarray(values, dtype=np.float64)[order]
    out = dict.fromkeys(_COLUMNS, math.nan)
    if len(s) == 0:
        return out
    initial, final = float(v[0]), float(v[-1])
    out |= {"initial": initial, "final": final, "change": final - initial}
    if len(s) < 2 or final == initial:
        return out
    sign = 1.0 if final > initial else -1.0
    half = (initial + final) / 2
    crossed = np.flatnonzero(sign * (v - half) >= 0)
    i = int(crossed[0])
    out |= {"half_step_before": int(s[i - 1]) if i > 0 else math.nan, "half_step": int(s[i])}
    slopes = np.diff(v) / np.diff(np.log1p(s.astype(np.float64)))
    j = int(np.argmax(sign * slopes))
    out |= {"steepest_from": int(s[j]), "steepest_to": int(s[j + 1]), "steepest_slope": float(slopes[j])}
    return out


def formation(scalars_or_store, stats: dict[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """One row per series: model, analysis, component, layer, head, stat and the formation columns.

    `scalars_or_store`: a `Store`, a store path, or a scalars table (as `Store.scalars()` returns);
    `stats`: analysis -> stats to table (default `FORMATION_STATS`). Sorted by series.
    """
    stats = FORMATION_STATS if stats is None else stats
    scalars = _scalars(scalars_or_store, list(stats))
    wanted = pd.Series(False, index=scalars.index)
    for analysis, names in stats.items():
        wanted |= (scalars["analysis"] == analysis) & scalars["stat"].isin(names)
    scalars = scalars[wanted]
    rows = []
    for key, group in scalars.groupby(_SERIES, dropna=False, sort=True):
        rows.append(dict(zip(_SERIES, key)) | formation_of_series(group["step"], group["value"]))
    table = pd.DataFrame(rows, columns=_SERIES + _COLUMNS)
    int_columns = ["layer", "head", "half_step_before", "half_step", "steepest_from", "steepest_to"]
    return table.astype({c: "Int64" for c in int_columns} | {c: "float64" for c in ("initial", "final", "change", "steepest_slope")})


def describe(row) -> str:
    """'layer 1 head 3 induction_score rose from 0.01 to 0.62, crossing half-way between steps 64 and 128'."""
    where = "" if pd.isna(row["layer"]) else f"layer {int(row['layer'])} " + ("" if pd.isna(row["head"]) else f"head {int(row['head'])} ")
    if pd.isna(row["half_step"]):
        return f"{where}{row['stat']}: no change"
    verb = "rose" if row["change"] >= 0 else "fell"
    crossing = (
        f"between steps {int(row['half_step_before'])} and {int(row['half_step'])}"
        if not pd.isna(row["half_step_before"]) else f"by step {int(row['half_step'])}"
    )  # fmt: skip
    return f"{where}{row['stat']} {verb} from {row['initial']:.3g} to {row['final']:.3g}, crossing half-way {crossing}"


def _scalars(source, analyses: list[str]) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    from pythia_dynamics.store import SCALAR_COLUMNS, Store

    store = source if isinstance(source, Store) else Store(source)
    present = [a for a in analyses if a in set(store.analyses())]
    return store.scalars(analysis=present) if present else pd.DataFrame(columns=list(SCALAR_COLUMNS))


