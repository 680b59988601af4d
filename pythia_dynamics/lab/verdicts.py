"""Verdicts from measurements: effects per level (mean and spread over seeds) and the rule that judges them.

The rule (`RULE`), for a comparison "metric is greater (or less) at `level` than at `baseline`":
effect = mean over seeds at `level` - mean at `baseline`; noise = the larger of the two levels' seed standard
deviations (ddof 1); **supported** when the effect has the predicted sign and |effect| > 2 x noise,
**contradicted** when it has the other sign and |effect| > 2 x noise, **no effect beyond seed noise**
otherwise, and **undecided** when a level has fewer than 2 seeds with a value (no spread to judge by).

Seed robustness (`ROBUST_RULE`, the seed-noise preset): a metric is seed-robust at a level when its seed
standard deviation is at most 10% of |mean|, or, for a step (a `*_step` metric), at most 5% of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["Comparison", "RULE", "ROBUST_RULE", "SIGMAS", "effects", "judge", "robustness"]

SIGMAS = 2.0
RULE = (f"supported if the difference of seed means has the predicted sign and exceeds {SIGMAS:g} x the larger "
        "seed standard deviation (ddof 1) of the two levels; contradicted if it exceeds that with the other "
        "sign; otherwise no effect beyond seed noise; undecided with fewer than 2 seeds")  # fmt: skip
ROBUST_RULE = "seed-robust if the seed standard deviation <= 10% of |mean| (for a step: <= 5% of training steps)"
VERDICT_COLUMNS = ["statement", "metric", "level", "baseline", "effect", "noise", "threshold", "verdict"]


@dataclass(frozen=True)
class Comparison:
    """A hypothesis as a measurable statement: `metric` is `direction` at `level` than at `baseline`."""

    statement: str
    metric: str
    level: str
    baseline: str
    direction: Literal["greater", "less"] = "greater"


def effects(measurements: pd.DataFrame) -> pd.DataFrame:
    """Per (level, metric): mean and standard deviation (ddof 1) over seeds, and how many seeds had a value.

    `measurements` has columns level, seed, metric, value (one row per suite and metric)."""
    grouped = measurements.dropna(subset=["value"]).groupby(["level", "metric"], sort=False)["value"]
    table = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return table.reset_index()


def judge(comparison: Comparison, table: pd.DataFrame) -> dict:
    """One verdict row for `comparison` from an `effects` table, by `RULE`."""
    def stats(level):
        row = table[(table["level"] == level) & (table["metric"] == comparison.metric)]
        return (float(row["mean"].iloc[0]), float(row["std"].iloc[0]), int(row["n"].iloc[0])) if len(row) else (np.nan, np.nan, 0)

    (mean_a, std_a, n_a), (mean_b, std_b, n_b) = stats(comparison.level), stats(comparison.baseline)
    effect = mean_a - mean_b
    noise = max(std_a, std_b) if min(n_a, n_b) >= 2 else np.nan
    threshold = SIGMAS * noise
    if not (math.isfinite(effect) and math.isfinite(threshold)):
        verdict = "undecided"
    elif abs(effect) <= threshold:
        verdict = "no effect beyond seed noise"
    else:
        predicted = effect > 0 if comparison.direction == "greater" else effect < 0
        verdict = "supported" if predicted else "contradicted"
    return {"statement": comparison.statement, "metric": comparison.metric, "level": comparison.level,
            "baseline": comparison.baseline, "effect": effect, "noise": noise, "threshold": threshold,
            "verdict": verdict}  # fmt: skip


def robustness(metric: str, level: str, table: pd.DataFrame, total_steps: int) -> dict:
    """One verdict row "metric is seed-robust" at `level`, by `ROBUST_RULE`."""
    row = table[(table["level"] == level) & (table["metric"] == metric)]
    mean, std, n = (float(row["mean"].iloc[0]), float(row["std"].iloc[0]), int(row["n"].iloc[0])) if len(row) else (np.nan, np.nan, 0)
    threshold = 0.05 * total_steps if metric.endswith("_step") else 0.1 * abs(mean)
    if n < 2 or not math.isfinite(std):
        verdict = "undecided"
    else:
        verdict = "supported" if std <= threshold else "contradicted"
    return {"statement": f"{metric} is seed-robust", "metric": metric, "level": level, "baseline": "",
            "effect": mean, "noise": std, "threshold": threshold, "verdict": verdict}  # fmt: skip
