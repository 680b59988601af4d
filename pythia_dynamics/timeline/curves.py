"""Trajectory models: small families of curves fitted to every series over training at once, chosen by AICc,
extrapolated with a band, and validated on held-out later checkpoints (docs/events.md).

With s the step and t = s / t_ref (t_ref: the last step of the fitted window, so that the parameters are
of order one whatever the schedule), every family is y = a + b g(x; theta), linear in (a, b):

- `log_linear`       y = a + b log(1 + s)                                        (2 parameters)
- `power_law`        y = a + b (1 + s)^c                                         (3)
- `saturating_exp`   y = a - b exp(-t / tau)                                     (3)
- `log_mod_exp`      y = K + A exp(-lambda t) log(1 + gamma max(t - t0, 0))      (5)

`log_mod_exp` is the exponentially modulated logarithm that arXiv 2508.03616 fits to the emergence of
massive activations across Pythia checkpoints (five parameters: a growth that sets in at t0, rises
logarithmically at rate gamma and is damped exponentially at rate lambda, on a baseline K), in the form
written here.

Fitting is least squares by variable projection, vectorised over series (a store has thousands): for each
point of a grid over the nonlinear parameters theta, (a, b) in closed form for every series at once (three
matrix products per block of grid points), the best grid point per series, then Levenberg-Marquardt on all
parameters from there (batched k x k solves; bounds by projection). Missing values weigh zero. A family is
chosen by the small-sample Akaike criterion AICc = n log(RSS / n) + 2k + 2k(k + 1) / (n - k - 1) (Gaussian
errors, k parameters). The band is prediction +- 1.96 sqrt(J Cov J^T + RSS / (n - k)) (delta method, J the
gradient in the parameters, Cov = RSS / (n - k) (J^T J)^-1 at the fit, as `scipy.optimize.curve_fit`
reports it). Held-out validation fits on the first `train_fraction` of the checkpoints and reports, per
family, the held-out RMSE divided by the series' range over all checkpoints (`nrmse`), and the share of
held-out points inside the band (`coverage`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["FAMILIES", "Fit", "Fits", "fit_family", "fit_many", "fit_series", "held_out", "held_out_many", "predict"]


# These two take steps (their t_ref is 1): with 1 + t instead of 1 + s, where a fit stops would change the
# shape of the curve.
def _log_linear(s):
    return np.log1p(s)


def _power_law(s, c):
    return np.power(1.0 + s, c)


def _saturating_exp(t, tau):
    return -np.exp(-t / tau)


def _log_mod_exp(t, lam, gamma, t0):
    return np.exp(-lam * t) * np.log1p(gamma * np.maximum(t - t0, 0.0))


_INF = np.inf


@dataclass(frozen=True)
class Family:
    name: str
    basis: object  # g(x, *theta): y = a + b g
    parameters: tuple[str, ...]  # a, b, then theta
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    grid: tuple[tuple[float, ...], ...]  # starting points in theta
    in_steps: bool = False  # fitted on steps, not on steps / t_ref

    def fn(self, x, *params):
        return params[0] + params[1] * self.basis(x, *params[2:])


def _grid(*axes) -> tuple[tuple[float, ...], ...]:
    mesh = np.meshgrid(*axes, indexing="ij")
    return tuple(zip(*(m.ravel().tolist() for m in mesh), strict=True))


FAMILIES = {
    f.name: f
    for f in (
        Family("log_linear", _log_linear, ("a", "b"), (-_INF, -_INF), (_INF, _INF), ((),), in_steps=True),
        Family("power_law", _power_law, ("a", "b", "c"), (-_INF, -_INF, -5.0), (_INF, _INF, 5.0),
               _grid([c for c in np.linspace(-5, 5, 101) if abs(c) > 1e-9]), in_steps=True),
        Family("saturating_exp", _saturating_exp, ("a", "b", "tau"), (-_INF, -_INF, 1e-4), (_INF, _INF, 1e3),
               _grid(np.logspace(-4, 3, 57))),
        Family("log_mod_exp", _log_mod_exp, ("K", "A", "lambda", "gamma", "t0"),
               (-_INF, -_INF, 0.0, 1e-3, 0.0), (_INF, _INF, 50.0, 1e6, 1.0),
               _grid([0, 0.25, 0.5, 1, 2, 4, 8, 16, 32], np.logspace(-2, 5, 15), [0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7])),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Fits:
    """One family fitted to each row of a (series, checkpoint) matrix. `ok[i]`: row i has a fit (enough
    finite points, finite RSS); elsewhere the numbers are NaN."""

    family: str
    params: np.ndarray  # (series, k), in FAMILIES[family].parameters order
    cov: np.ndarray  # (series, k, k)
    t_ref: float  # steps are divided by this
    rss: np.ndarray  # (series,)
    n: np.ndarray  # (series,) points fitted
    aicc: np.ndarray  # (series,)
    ok: np.ndarray  # (series,) bool

    def predict(self, steps, band: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(series, len(steps)) predictions and half-widths of their 95% bands."""
        spec = FAMILIES[self.family]
        x = np.asarray(steps, dtype=np.float64) / self.t_ref
        y = _evaluate(spec, x, self.params)
        if not band:
            return y, np.full_like(y, np.nan)
        k = len(spec.parameters)
        jac = _jacobian(spec, x, self.params)
        cov = np.where(np.isfinite(self.cov), self.cov, np.nan)
        variance = np.einsum("sti,sij,stj->st", jac, cov, jac) + (self.rss / np.maximum(self.n - k, 1))[:, None]
        return y, 1.96 * np.sqrt(np.maximum(variance, 0.0))

    def one(self, i: int) -> Fit | None:
        if not self.ok[i]:
            return None
        return Fit(self.family, self.params[i], self.cov[i], self.t_ref, float(self.rss[i]), int(self.n[i]), float(self.aicc[i]))


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


def predict(fit: Fit, steps, band: bool = True) -> tuple[np.ndarray, np.ndarray]:
    batch = Fits(fit.family, fit.params[None], fit.cov[None], fit.t_ref, np.array([fit.rss]), np.array([fit.n]),
                 np.array([fit.aicc]), np.array([True]))  # fmt: skip
    y, half_width = batch.predict(steps, band)
    return y[0], half_width[0]


def _evaluate(spec: Family, x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """(series, n) values of the curve with each row's parameters, at x (n,)."""
    theta = [params[:, j, None] for j in range(2, params.shape[1])]
    with np.errstate(over="ignore", invalid="ignore"):
        return params[:, :1] + params[:, 1:2] * spec.basis(x[None, :], *theta)


def _jacobian(spec: Family, x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """(series, n, k) derivatives in each parameter: exact in a and b, central differences in theta."""
    s, k = params.shape
    jac = np.empty((s, len(x), k))
    jac[:, :, 0] = 1.0
    theta = [params[:, j, None] for j in range(2, k)]
    with np.errstate(over="ignore", invalid="ignore"):
        jac[:, :, 1] = spec.basis(x[None, :], *theta)
        for j in range(2, k):
            h = 1e-6 * np.maximum(np.abs(params[:, j]), 1e-3)
            up, down = params.copy(), params.copy()
            up[:, j] += h
            down[:, j] -= h
            jac[:, :, j] = (_evaluate(spec, x, up) - _evaluate(spec, x, down)) / (2 * h[:, None])
    return jac


def fit_many(family: str, steps, values, grid_block: int = 128, iterations: int = 60) -> Fits:
    """Least-squares fit of one family to every row of `values` (series, len(steps)); NaN entries are missing.

    Floating-point overflow is expected on the way (a power law of a huge series, a trial step too far) and
    is not warned about: a row whose numbers do not stay finite gets no fit (`Fits.ok`)."""
    with np.errstate(all="ignore"):
        return _fit_many(family, steps, values, grid_block, iterations)


def _fit_many(family: str, steps, values, grid_block: int, iterations: int) -> Fits:
    spec = FAMILIES[family]
    steps = np.asarray(steps, dtype=np.float64)
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    k = len(spec.parameters)
    t_ref = 1.0 if spec.in_steps else max(float(steps[-1]), 1.0)
    x = steps / t_ref
    weight = np.isfinite(values).astype(np.float64)
    y = np.where(weight > 0, values, 0.0)
    n = weight.sum(axis=1)
    params = _grid_start(spec, x, y, weight, grid_block)
    params, rss = _levenberg_marquardt(spec, x, y, weight, params, iterations)
    ok = (n >= k + 2) & np.isfinite(rss) & np.isfinite(params).all(axis=1)
    jac = _jacobian(spec, x, params) * np.sqrt(weight)[:, :, None]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        information = np.einsum("sti,stj->sij", jac, jac)
        ok &= np.isfinite(information).all(axis=(1, 2))
        information[~ok] = np.eye(k)  # one non-finite matrix would stop the whole batched pinv
        cov = np.linalg.pinv(information) * (rss / np.maximum(n - k, 1))[:, None, None]
        scale = np.maximum(np.nanmax(np.abs(np.where(weight > 0, values, np.nan)), axis=1, initial=0.0), 1e-300)
        # A perfect fit has RSS 0 and log(0): floor it at float64 precision of the series.
        rss_floor = np.maximum(np.maximum(rss, n * (1e-15 * scale) ** 2), 1e-300)
        aicc = n * np.log(rss_floor / np.maximum(n, 1)) + 2 * k + 2 * k * (k + 1) / np.maximum(n - k - 1, 1)
    nan = np.where(ok, 1.0, np.nan)
    return Fits(family, params * nan[:, None], cov * nan[:, None, None], t_ref, rss * nan, n, aicc * nan, ok)


def _grid_start(spec: Family, x, y, weight, grid_block: int) -> np.ndarray:
    """Per series, the grid point of theta with the least RSS, with its closed-form (a, b)."""
    s = len(y)
    wy = weight * y
    sw, sy, syy = weight.sum(axis=1), wy.sum(axis=1), (wy * y).sum(axis=1)
    best = np.full(s, np.inf)
    start = np.full((s, len(spec.parameters)), np.nan)
    grid = spec.grid
    for first in range(0, len(grid), grid_block):
        points = grid[first : first + grid_block]
        block = np.array(points, dtype=np.float64).reshape(len(points), len(spec.parameters) - 2)
        with np.errstate(over="ignore", invalid="ignore"):
            basis = spec.basis(x[:, None], *[block[None, :, j] for j in range(block.shape[1])])  # (n, points)
        basis = np.broadcast_to(basis, (len(x), len(block)))
        finite = np.isfinite(basis).all(axis=0)
        basis = np.where(finite[None, :], basis, 0.0)
        sg, sgg, sgy = weight @ basis, weight @ basis**2, wy @ basis
        with np.errstate(divide="ignore", invalid="ignore"):
            det = sw[:, None] * sgg - sg**2
            b = (sw[:, None] * sgy - sg * sy[:, None]) / det
            a = (sy[:, None] - b * sg) / sw[:, None]
            rss = syy[:, None] - 2 * a * sy[:, None] - 2 * b * sgy + a**2 * sw[:, None] + 2 * a * b * sg + b**2 * sgg
        usable = finite[None, :] & (det > 1e-12 * np.abs(sw[:, None] * sgg)) & np.isfinite(rss)
        rss = np.where(usable, rss, np.inf)
        pick = rss.argmin(axis=1)
        value = rss[np.arange(s), pick]
        better = value < best
        best[better] = value[better]
        start[better, 0] = a[better, pick[better]]
        start[better, 1] = b[better, pick[better]]
        start[better, 2:] = block[pick[better]]
    return start


def _levenberg_marquardt(spec: Family, x, y, weight, params, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Damped Gauss-Newton steps on every series at once, each accepted only where it lowers that series' RSS."""
    lower, upper = np.array(spec.lower), np.array(spec.upper)
    params = np.clip(params, lower, upper)

    def rss_of(p, rows=slice(None)):
        r = (y[rows] - _evaluate(spec, x, p)) * weight[rows]
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(r).all(axis=1), (r * r).sum(axis=1), np.inf), r

    rss, residual = rss_of(params)
    damping = np.full(len(params), 1e-3)
    active = np.isfinite(rss) & np.isfinite(params).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # overflowing trials are rejected below
        for _ in range(iterations):
            if not active.any():
                break
            p, r = params[active], residual[active]
            jac = _jacobian(spec, x, p) * weight[active][:, :, None]
            jtj = np.einsum("sti,stj->sij", jac, jac)
            jtr = np.einsum("sti,st->si", jac, np.nan_to_num(r))
            diag = np.einsum("sii->si", jtj)
            diag = diag + 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300
            system = jtj + (damping[active][:, None] * diag)[:, :, None] * np.eye(len(lower))[None]
            usable = np.isfinite(system).all(axis=(1, 2)) & np.isfinite(jtr).all(axis=1)
            system[~usable], jtr[~usable] = np.eye(len(lower)), 0.0  # no step where the derivatives overflow
            try:
                step = np.linalg.solve(system, jtr[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = np.einsum("sij,sj->si", np.linalg.pinv(system), jtr)
            trial = np.clip(p + np.nan_to_num(step), lower, upper)
            index = np.flatnonzero(active)
            trial_rss, trial_residual = rss_of(trial, index)
            better = trial_rss < rss[active]
            params[index[better]] = trial[better]
            residual[index[better]] = trial_residual[better]
            improvement = (rss[index] - np.where(better, trial_rss, rss[index])) / np.maximum(rss[index], 1e-300)
            rss[index[better]] = trial_rss[better]
            damping[index] = np.where(better, damping[index] / 3, damping[index] * 4)
            # A series stops when a step no longer improves it measurably, or the damping has run away.
            done = (better & (improvement < 1e-12)) | (damping[index] > 1e12) | (rss[index] == 0)
            active[index[done]] = False
    return params, rss


def fit_family(family: str, steps, values) -> Fit | None:
    """Least-squares fit of one family to one series (None when it has too few points or fails)."""
    return fit_many(family, steps, np.asarray(values, dtype=np.float64)[None]).one(0)


def fit_series(steps, values, families=None) -> tuple[Fit | None, dict[str, Fit | None]]:
    """Every family fitted to one series; the one with the lowest AICc, and all of them."""
    fits = {name: fit_family(name, steps, values) for name in (families or FAMILIES)}
    valid = [f for f in fits.values() if f is not None]
    return (min(valid, key=lambda f: f.aicc) if valid else None), fits


def held_out_many(steps, values, train_fraction: float = 0.7, families=None) -> pd.DataFrame:
    """Every row of `values` (series, checkpoints) fitted on the first `train_fraction` of the checkpoints
    by each family, the rest predicted: one row per (series index, family) and one per series for the
    AICc choice (`family` 'chosen: <name>'), with nrmse, coverage, aicc and train_until_step."""
    steps = np.asarray(steps, dtype=np.float64)
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_train = math.ceil(train_fraction * len(steps))
    if n_train >= len(steps) or n_train < 4:
        raise ValueError(f"held-out validation needs checkpoints on both sides: {len(steps)} checkpoints, "
                         f"{n_train} to fit on")  # fmt: skip
    train, test = values[:, :n_train], values[:, n_train:]
    finite_test = np.isfinite(test)
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(values, axis=1, initial=-np.inf) - np.nanmin(values, axis=1, initial=np.inf)
    spread = np.where(np.isfinite(spread) & (spread > 0), spread, 1.0)
    tables, aiccs, errors, coverages = [], [], [], []
    names = list(families or FAMILIES)
    for name in names:
        fits = fit_many(name, steps[:n_train], train)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            prediction, half_width = fits.predict(steps[n_train:])
            warnings.simplefilter("ignore", RuntimeWarning)  # a series with no held-out value: NaN, not a warning
            squared = np.where(finite_test, (prediction - test) ** 2, np.nan)
            inside = np.where(finite_test, np.abs(prediction - test) <= half_width, np.nan)
            nrmse = np.sqrt(np.nanmean(squared, axis=1)) / spread if finite_test.any() else np.full(len(values), np.nan)
            coverage = np.nanmean(inside, axis=1) if finite_test.any() else np.full(len(values), np.nan)
        nrmse, coverage = np.where(fits.ok, nrmse, np.nan), np.where(fits.ok, coverage, np.nan)
        tables.append(pd.DataFrame({"index": np.arange(len(values)), "family": name, "nrmse": nrmse,
                                    "coverage": coverage, "aicc": fits.aicc}))  # fmt: skip
        aiccs.append(np.where(np.isfinite(fits.aicc), fits.aicc, np.inf))
        errors.append(nrmse)
        coverages.append(coverage)
    aiccs = np.array(aiccs)
    pick = aiccs.argmin(axis=0)
    has = np.isfinite(aiccs.min(axis=0))
    rows = np.arange(len(values))
    chosen = pd.DataFrame({
        "index": rows[has], "family": ["chosen: " + names[p] for p in pick[has]],
        "nrmse": np.array(errors)[pick, rows][has], "coverage": np.array(coverages)[pick, rows][has],
        "aicc": aiccs[pick, rows][has],
    })  # fmt: skip
    table = pd.concat([*tables, chosen], ignore_index=True).sort_values(["index"], kind="stable", ignore_index=True)
    table["train_until_step"] = int(steps[n_train - 1])
    return table


def held_out(steps, values, train_fraction: float = 0.7, families=None) -> pd.DataFrame:
    """`held_out_many` for one series: one row per family and one for the AICc choice."""
    return held_out_many(steps, np.asarray(values, dtype=np.float64)[None], train_fraction, families).drop(columns="index")
