"""Verdicts from measurements: effects per level (mean and spread over seeds) and the rule that judges them.

The rule (`RULE`), for a comparison "metric is greater (or less) at `level` than at `baseline`":
effect = mean over seeds at `level` - mean at `baseline`; noise = the larger of the two levels' seed standard
deviations (ddof 1); **supported** when the effect has the predicted sign and |effect| > 2 x noise,
**contradicted** when it has the other sign and |effect| > 2 x noise, **no effect beyond seed noise**
otherwise, and **undecided** when a level has fewer than 2 seeds with a value (no spread to judge by).

A threshold ("metric is greater (or less) than `bound` at `level`", `Threshold`: does a level show a
phenomenon at all) is judged by the same rule with the bound in place of a baseline level: effect = mean at
`level` - bound, noise = the level's seed standard deviation.

Seed robustness (`ROBUST_RULE`, the seed-noise preset): a metric is seed-robust at a level when its seed
standard deviation is at most 10% of |mean|, or, for a step (a `*_step` metric), at most 5% of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

__all__ = ["Comparison", "Threshold", "RULE", "ROBUST_RULE", "SIGMAS", "effects", "judge", "judge_threshold", "robustness"]

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


@dataclass(frozen=True)
class Threshold:
    """A phenomenon as a measurable statement: `metric` is `direction` than `bound` at `level`."""

    statement: str
    metric: str
    level: str
    bound: float
    direction: Literal["greater", "less"] = "greater"


def effects(measurements: pd.DataFrame) -> pd.DataFrame:
    """Per (level, metric): mean and standard deviation (ddof 1) over seeds, and how many seeds had a value.

    `measurements` has columns level, seed, metric, value (one row per suite and metric)."""
    grouped = measurements.dropna(subset=["value"]).groupby(["level", "metric"], sort=False)["value"]
    table = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
    return table.reset_index()


def _stats(table: pd.DataFrame, level: str, metric: str) -> tuple[float, float, int]:
    row = table[(table["level"] == level) & (table["metric"] == metric)]
    return (float(row["mean"].iloc[0]), float(row["std"].iloc[0]), int(row["n"].iloc[0])) if len(row) else (np.nan, np.nan, 0)


def _verdict(effect: float, threshold: float, direction: str) -> str:
    if not (math.isfinite(effect) and math.isfinite(threshold)):
        return "undecided"
    if abs(effect) <= threshold:
        return "no effect beyond seed noise"
    predicted = effect > 0 if direction == "greater" else effect < 0
    return "supported" if predicted else "contradicted"


def judge(comparison: Comparison, table: pd.DataFrame) -> dict:
    """One verdict row for `comparison` from an `effects` table, by `RULE`."""
    (mean_a, std_a, n_a) = _stats(table, comparison.level, comparison.metric)
    (mean_b, std_b, n_b) = _stats(table, comparison.baseline, comparison.metric)
    effect = mean_a - mean_b
    noise = max(std_a, std_b) if min(n_a, n_b) >= 2 else np.nan
    threshold = SIGMAS * noise
    verdict = _verdict(effect, threshold, comparison.direction)
    return {"statement": comparison.statement, "metric": comparison.metric, "level": comparison.level,
            "baseline": comparison.baseline, "effect": effect, "noise": noise, "threshold": threshold,
            "verdict": verdict}  # fmt: skip


def judge_threshold(bound: Threshold, table: pd.DataFrame) -> dict:
    """One verdict row for `bound` from an `effects` table: `RULE` with the bound as the baseline's mean and
    the level's own seed standard deviation as the noise."""
    mean, std, n = _stats(table, bound.level, bound.metric)
    effect, noise = mean - bound.bound, std if n >= 2 else np.nan
    return {"statement": bound.statement, "metric": bound.metric, "level": bound.level,
            "baseline": f"bound {bound.bound:g}", "effect": effect, "noise": noise, "threshold": SIGMAS * noise,
            "verdict": _verdict(effect, SIGMAS * noise, bound.direction)}  # fmt: skip


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
