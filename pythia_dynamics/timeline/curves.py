"""Trajectory models: small families of curves fitted to a series over training, chosen by AICc, extrapolated
with a band, and validated on held-out later checkpoints (docs/events.md).

With s the step and t = s / t_ref (t_ref: the last fitted step, so that the parameters are of order one
whatever the schedule):

- `log_linear`       y = a + b log(1 + s)                                        (2 parameters)
- `power_law`        y = a + b (1 + s)^c                                         (3)
- `saturating_exp`   y = a - b exp(-t / tau)                                     (3)
- `log_mod_exp`      y = K + A exp(-lambda t) log(1 + gamma max(t - t0, 0))      (5)

`log_mod_exp` is the exponentially modulated logarithm that arXiv 2508.03616 fits to the emergence of
massive activations across Pythia checkpoints (five parameters: a growth that sets in at t0, rises
logarithmically at rate gamma and is damped exponentially at rate lambda, on a baseline K), in the form
written here. Fits are least squares (`scipy.optimize.curve_fit`); a family is chosen by the small-sample
Akaike criterion AICc = n log(RSS / n) + 2k + 2k(k + 1) / (n - k - 1) (Gaussian errors, k parameters).
The band is prediction +- 1.96 sqrt(J Cov J^T + RSS / (n - k)) (delta method, J the gradient in the
parameters, Cov curve_fit's covariance). Held-out validation fits on the first `train_fraction` of the
checkpoints and reports, per family, the held-out RMSE divided by the series' range over all checkpoints
(`nrmse`), and the share of held-out points inside the band (`coverage`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["FAMILIES", "Fit", "fit_family", "fit_series", "held_out", "predict"]

log = logging.getLogger(__name__)


# These two take steps (their t_ref is 1): with 1 + t instead of 1 + s, where a fit stops would change the
# shape of the curve.
def _log_linear(s, a, b):
    return a + b * np.log1p(s)


def _power_law(s, a, b, c):
    return a + b * np.power(1.0 + s, c)


def _saturating_exp(t, a, b, tau):
    return a - b * np.exp(-t / tau)


def _log_mod_exp(t, k, amplitude, lam, gamma, t0):
    return k + amplitude * np.exp(-lam * t) * np.log1p(gamma * np.maximum(t - t0, 0.0))


@dataclass(frozen=True)
class Family:
    name: str
    fn: object
    parameters: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    in_steps: bool = False  # fitted on steps, not on steps / t_ref

    def starts(self, t: np.ndarray, y: np.ndarray) -> list[tuple[float, ...]]:
        """Initial guesses from the data (the curve's level and span)."""
        span = (y[-1] - y[0]) or (np.ptp(y) or 1.0)
        if self.name == "log_linear":
            return [(y[0], span / np.log1p(t[-1]))]
        if self.name == "power_law":
            starts = []
            for c in (0.5, -0.5, 0.1):
                b = span / ((1.0 + t[-1]) ** c - 1.0)
                starts.append((y[0] - b, b, c))
            return starts
        if self.name == "saturating_exp":
            return [(y[-1], span, 0.3), (y[-1], span, 0.05)]
        return [(y[0], span, 0.5, 10.0, 0.0), (y[0], 2 * span, 2.0, 100.0, 0.01)]


_INF = np.inf
FAMILIES = {
    f.name: f
    for f in (
        Family("log_linear", _log_linear, ("a", "b"), (-_INF, -_INF), (_INF, _INF), in_steps=True),
        Family("power_law", _power_law, ("a", "b", "c"), (-_INF, -_INF, -5.0), (_INF, _INF, 5.0), in_steps=True),
        Family("saturating_exp", _saturating_exp, ("a", "b", "tau"), (-_INF, -_INF, 1e-4), (_INF, _INF, 1e3)),
        Family("log_mod_exp", _log_mod_exp, ("K", "A", "lambda", "gamma", "t0"),
               (-_INF, -_INF, 0.0, 1e-3, 0.0), (_INF, _INF, 50.0, 1e6, 1.0)),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Fit:
    family: str
    params: np.ndarray  # in FAMILIES[family].parameters order
    cov: np.ndarray
    t_ref: float  # steps are divided by this
    rss: float
    n: int
    aicc: float

    def predict(self, steps, band: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Prediction at `steps` and the half-width of its 95% band (NaN where the covariance is unknown)."""
        return predict(self, steps, band)


def fit_family(family: str, steps, values) -> Fit | None:
    """Least-squares fit of one family (None when it fails to converge or has too few points)."""
    from scipy.optimize import curve_fit

    spec = FAMILIES[family]
    steps, y = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    k, n = len(spec.parameters), len(y)
    if n < k + 2:
        return None
    t_ref = 1.0 if spec.in_steps else max(steps[-1], 1.0)
    t = steps / t_ref
    best = None
    for start in spec.starts(t, y):
        start = np.clip(start, spec.lower, spec.upper)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, cov = curve_fit(spec.fn, t, y, p0=start, bounds=(spec.lower, spec.upper), maxfev=1000)
        except (RuntimeError, ValueError):
            continue
        rss = float(np.sum((spec.fn(t, *params) - y) ** 2))
        if np.isfinite(rss) and (best is None or rss < best[2]):
            best = (params, cov, rss)
    if best is None:
        return None
    params, cov, rss = best
    scale = max(np.ptp(y), np.abs(y).max(), 1e-300)
    # A perfect fit has RSS 0 and log(0): floor it at float64 precision of the series.
    rss_floor = max(rss, n * (1e-15 * scale) ** 2, 1e-300)
    aicc = n * np.log(rss_floor / n) + 2 * k + 2 * k * (k + 1) / max(n - k - 1, 1)
    return Fit(family, params, cov, t_ref, rss, n, float(aicc))


def predict(fit: Fit, steps, band: bool = True) -> tuple[np.ndarray, np.ndarray]:
    spec = FAMILIES[fit.family]
    t = np.asarray(steps, dtype=np.float64) / fit.t_ref
    y = spec.fn(t, *fit.params)
    if not band:
        return y, np.full_like(y, np.nan)
    k = len(fit.params)
    jac = np.empty((len(t), k))
    for j in range(k):  # central differences in each parameter
        h = 1e-6 * max(abs(fit.params[j]), 1e-3)
        up, down = fit.params.copy(), fit.params.copy()
        up[j] += h
        down[j] -= h
        jac[:, j] = (spec.fn(t, *up) - spec.fn(t, *down)) / (2 * h)
    cov = np.where(np.isfinite(fit.cov), fit.cov, np.nan)
    variance = np.einsum("ti,ij,tj->t", jac, cov, jac) + fit.rss / max(fit.n - k, 1)
    return y, 1.96 * np.sqrt(np.maximum(variance, 0.0))


def fit_series(steps, values, families=None) -> tuple[Fit | None, dict[str, Fit | None]]:
    """Every family fitted to one series; the one with the lowest AICc, and all of them."""
    fits = {name: fit_family(name, steps, values) for name in (families or FAMILIES)}
    valid = [f for f in fits.values() if f is not None]
    return (min(valid, key=lambda f: f.aicc) if valid else None), fits


def held_out(steps, values, train_fraction: float = 0.7, families=None) -> pd.DataFrame:
    """Fit on the first `train_fraction` of the checkpoints, predict the rest: one row per family and
    one for the AICc choice (`family` 'chosen: <name>'), with nrmse, coverage and aicc."""
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    n_train = int(np.ceil(train_fraction * len(steps)))
    if n_train >= len(steps) or n_train < 4:
        raise ValueError(f"held-out validation needs checkpoints on both sides: {len(steps)} checkpoints, "
                         f"{n_train} to fit on")  # fmt: skip
    chosen, fits = fit_series(steps[:n_train], values[:n_train], families)
    spread = np.ptp(values) or 1.0
    test_steps, test_values = steps[n_train:], values[n_train:]
    rows = []
    for name, fit in [*fits.items(), *([("chosen: " + chosen.family, chosen)] if chosen else [])]:
        if fit is None:
            rows.append({"family": name, "nrmse": np.nan, "coverage": np.nan, "aicc": np.nan})
            continue
        prediction, half_width = fit.predict(test_steps)
        rows.append({
            "family": name, "nrmse": float(np.sqrt(np.mean((prediction - test_values) ** 2)) / spread),
            "coverage": float(np.mean(np.abs(prediction - test_values) <= half_width)), "aicc": fit.aicc,
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table["train_until_step"] = int(steps[n_train - 1])
    return table
