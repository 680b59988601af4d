"""Change points of one scalar series over training, on the log(1 + step) axis (docs/events.md).

A series y_0 .. y_{T-1} at checkpoints s_0 < .. < s_{T-1}, with u = log(1 + s), becomes its increments less
the series' typical slope on the log-step axis,

    r_i = (y_{i+1} - y_i) - m (u_{i+1} - u_i),    m = median_i (y_{i+1} - y_i) / (u_{i+1} - u_i),

so a trend that is steady on a log-step plot gives r = 0, a kink on that axis is a step in r, and a
sudden jump of y between two checkpoints is a one-interval spike in r. r is put in noise units,

    z_i = (r_i - median(r)) / sigma,
    sigma = max(1.4826 MAD(diff(r)) / sqrt(2),  FLOOR (q90(r) - q10(r)),  TINY max_i |r_i - median(r)|)

(the MAD of first differences estimates the noise without being moved by a few changes in level; the
floors keep a noiseless curve from having a zero noise scale: FLOOR = 0.05 for smooth curves, TINY = 0.001
for a noiseless series that is steady but for one jump). A series whose sigma is below 1e-12 of its largest
increment (constant, or exactly steady on the log-step axis, up to rounding) has no change point. The change points are the exact
minimiser of the penalised piecewise-constant least-squares cost

    sum over segments of sum_i (z_i - mean of its segment)^2  +  penalty * (number of changes)

found by ruptures' `KernelCPD(kernel="linear", min_size=1)` (PELT, exact, compiled). The penalty depends on
the number of checkpoints only: `PENALTY_TABLE`, made by `calibrate_penalties` so that a series of pure
Gaussian noise gets one or more change points in at most about 4% of series (target 5%; the measured rates
are in docs/events.md). A change at r-index b is reported at checkpoint b, where the increment before
(r_{b-1}) and after (r_b) meet; a jump between checkpoints k and k+1 gives changes at k and k+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CALIBRATION_LENGTHS",
    "FALSE_POSITIVE_TARGET",
    "FLOOR",
    "MIN_POINTS",
    "PENALTY_TABLE",
    "ChangePoints",
    "calibrate_penalties",
    "critical_penalty",
    "detect",
    "noise_false_positive_rate",
    "noise_schedule",
    "normalised_increments",
    "penalty_for",
]

FALSE_POSITIVE_TARGET = 0.05
# The noise scale is at least this fraction of r's 10-90% range (noiseless curves).
FLOOR = 0.05
# ... and this fraction of its largest deviation (a noiseless series with one jump: r is zero but there).
TINY = 1e-3
# Fewer checkpoints than this: no change points are looked for.
MIN_POINTS = 6
CALIBRATION_LENGTHS = (6, 8, 12, 16, 24, 37, 50, 80, 120, 160, 250)
# (checkpoints, penalty per change point): calibrate_penalties() (seed 0, 4000 series per length).
PENALTY_TABLE = [
    (6, 49.14), (8, 19.63), (12, 12.6), (16, 9.34), (24, 7.04), (37, 6.59), (50, 6.57), (80, 7.11), (120, 9.32),
    (160, 11.48), (250, 18.56),
]  # fmt: skip


@dataclass(frozen=True)
class ChangePoints:
    """One series' change points: checkpoint indices, and the jump of the normalised increments at each."""

    index: np.ndarray  # int, checkpoint index (into the series' steps) of each change
    jump: np.ndarray  # float, mean of z after minus mean of z before (noise units; + faster rise or slower fall)


def log_steps(steps) -> np.ndarray:
    return np.log1p(np.asarray(steps, dtype=np.float64))


def normalised_increments(steps, values) -> np.ndarray:
    """z: the increments of `values` less the series' typical slope on the log(1 + step) axis, in noise
    units (module docstring). All zeros for a series with nothing to detect (constant, or exactly steady)."""
    du = np.diff(log_steps(steps))
    dy = np.diff(np.asarray(values, dtype=np.float64))
    r = dy - np.median(dy / du) * du
    dr = np.diff(r)
    noise = 1.4826 * np.median(np.abs(dr - np.median(dr))) / np.sqrt(2.0)
    q10, q90 = np.quantile(r, [0.1, 0.9])
    sigma = max(noise, FLOOR * (q90 - q10), TINY * np.abs(r - np.median(r)).max())
    if not np.isfinite(sigma) or sigma <= 1e-12 * max(np.abs(dy).max(), 1e-300):
        return np.zeros_like(r)
    return (r - np.median(r)) / sigma


def normalised_increments_many(steps, values) -> np.ndarray:
    """`normalised_increments` of every row of `values` (series, len(steps); every value finite) at once:
    the same numbers, row by row, without a Python call per series (a full-size store has ~40,000)."""
    du = np.diff(log_steps(steps))
    dy = np.diff(np.asarray(values, dtype=np.float64), axis=1)
    r = dy - np.median(dy / du, axis=1, keepdims=True) * du
    dr = np.diff(r, axis=1)
    noise = 1.4826 * np.median(np.abs(dr - np.median(dr, axis=1, keepdims=True)), axis=1) / np.sqrt(2.0)
    q10, q90 = np.quantile(r, [0.1, 0.9], axis=1)
    centre = np.median(r, axis=1, keepdims=True)
    sigma = np.maximum(np.maximum(noise, FLOOR * (q90 - q10)), TINY * np.abs(r - centre).max(axis=1))
    flat = ~np.isfinite(sigma) | (sigma <= 1e-12 * np.maximum(np.abs(dy).max(axis=1), 1e-300))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (r - centre) / sigma[:, None]
    z[flat] = 0.0
    return z


def changes_of_increments(z: np.ndarray, n_points: int, penalty: float | None = None) -> ChangePoints:
    """`detect`'s segmentation of one series' normalised increments `z` (from `normalised_increments`)."""
    if n_points < MIN_POINTS or not np.any(z):
        return ChangePoints(np.zeros(0, dtype=np.int64), np.zeros(0))
    return _changes(z, _segmenter(z).predict(pen=penalty_for(n_points, penalty)))


def penalty_for(n_points: int, penalty: float | None = None) -> float:
    """The penalty per change point for a series of `n_points` checkpoints: `penalty` if given, else
    `PENALTY_TABLE` interpolated linearly in log(n_points) (held constant beyond its ends)."""
    if penalty is not None:
        return float(penalty)
    lengths, penalties = zip(*PENALTY_TABLE)
    return float(np.interp(np.log(n_points), np.log(lengths), penalties))


def detect(steps, values, penalty: float | None = None) -> ChangePoints:
    """Change points of one series (steps strictly increasing, values finite); see the module docstring.

    `penalty` (per change point, in squared noise units) overrides the calibrated `penalty_for(len(steps))`.
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if len(steps) < MIN_POINTS:
        return ChangePoints(np.zeros(0, dtype=np.int64), np.zeros(0))
    return changes_of_increments(normalised_increments(steps, values), len(steps), penalty)


def _segmenter(z: np.ndarray):
    import ruptures  # here, so that importing pythia_dynamics.timeline stays light

    return ruptures.KernelCPD(kernel="linear", min_size=1, jump=1).fit(z.reshape(-1, 1))


def _changes(z: np.ndarray, ends: list[int]) -> ChangePoints:
    bounds = [0, *ends]
    means = np.array([z[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    return ChangePoints(np.asarray(ends[:-1], dtype=np.int64), np.diff(means))


# ---------------------------------------------------------------------------------------------
# How the penalty was chosen


def noise_schedule(n_points: int) -> np.ndarray:
    """A schedule like Pythia's and the mini suite's: 0, log-spaced early steps, then evenly spaced ones."""
    early = [0, 1, 2, 4, 8, 16, 32][: max(1, n_points // 4)]
    late = 64 * np.arange(1, n_points - len(early) + 1)
    return np.concatenate([np.asarray(early, dtype=np.int64), late.astype(np.int64)])


def noise_false_positive_rate(n_points: int, n_series: int = 2000, penalty: float | None = None, seed: int = 0) -> float:
    """Fraction of pure-noise series (i.i.d. Gaussian values on `noise_schedule(n_points)`) in which
    `detect` finds one or more change points."""
    rng = np.random.default_rng(seed)
    steps = noise_schedule(n_points)
    hits = sum(len(detect(steps, rng.normal(size=n_points), penalty).index) > 0 for _ in range(n_series))
    return hits / n_series


def critical_penalty(z: np.ndarray, high: float = 200.0, tol: float = 0.01) -> float:
    """The smallest penalty at which `z` gets no change point (for this exact penalised cost the number of
    changes never rises with the penalty, so a bisection finds it)."""
    segmenter, low = _segmenter(z), 0.0
    if len(segmenter.predict(pen=high)) > 1:
        return high
    while high - low > tol:
        mid = (low + high) / 2
        low, high = (mid, high) if len(segmenter.predict(pen=mid)) > 1 else (low, mid)
    return high


def calibrate_penalties(
    lengths=CALIBRATION_LENGTHS, n_series: int = 4000, rate: float = FALSE_POSITIVE_TARGET, margin: float = 0.01,
    seed: int = 0,
) -> list[tuple[int, float]]:  # fmt: skip
    """(length, penalty) pairs: the (1 - rate + margin) quantile of the critical penalty of pure-noise
    series of each length, so that about `rate - margin` of them get a change point. `PENALTY_TABLE` is
    `calibrate_penalties()`."""
    rng = np.random.default_rng(seed)
    table = []
    for n in lengths:
        steps = noise_schedule(n)
        critical = []
        for _ in range(n_series):
            z = normalised_increments(steps, rng.normal(size=n))
            critical.append(critical_penalty(z) if np.any(z) else 0.0)
        table.append((int(n), round(float(np.quantile(critical, 1 - rate + margin)), 2)))
    return table
