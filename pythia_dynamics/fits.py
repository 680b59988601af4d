"""Distributions of weights, activations and gradients: streaming summaries and parametric fits.

Shared by every analysis that describes a distribution of numbers. Three kinds of tool:

**Streaming accumulators** give the same numbers whether the data arrive whole or in chunks (an
activation analysis sees one batch at a time), so the two can be mixed freely:

- `RunningMoments`: count, mean, central moment sums M2, M3, M4 (Welford/Chan/Pébay parallel
  update, float64) and max |x|. `std` is the population standard deviation (ddof 0), `skew` =
  sqrt(n) M3 / M2^1.5 (scipy.stats.skew, bias=True), `excess_kurtosis` = n M4 / M2^2 - 3
  (scipy.stats.kurtosis, fisher=True, bias=True). A NaN anywhere makes every moment NaN.
- `FixedBinHistogram(edges)`: counts per bin with numpy.histogram's convention (bins half-open
  [e_i, e_i+1) except the last, which includes its right edge), plus `underflow` (x < edges[0]),
  `overflow` (x > edges[-1], +inf included) and `nan_count`, which no bin holds.
- `Reservoir(capacity, seed)`: a uniform sample without replacement of everything seen, the same
  however the stream was chunked (element i gets the i-th draw of a seeded generator as its key;
  the `capacity` smallest keys are kept). `subsample(x, k, seed)` is the one-shot equivalent for a
  tensor held whole (uniform without replacement; a different sample from `Reservoir`).

**Fixed histogram bins** (`SymlogBins`): sweeps histogram every checkpoint on the same edges, chosen
before any checkpoint is seen, so histograms animate and overlay across steps, layers and models.
Edges are `w * sinh(u)` for `u` evenly spaced on [-U, U] with `w * sinh(U) = max_abs`: bins about
`w * du` wide near zero and a constant relative width `du` (about 7.7% for the weight scheme) in the
tails, so one table resolves both a Gaussian bulk and outliers orders of magnitude out. Zero is an
edge. Values beyond ±max_abs are counted as underflow/overflow. `WEIGHT_BINS`, used for every weight
matrix of every model, has `w` = 0.002 (a tenth of GPT-NeoX's initialisation std 0.02),
max_abs = 10 (500 init stds) and 240 bins; it depends on nothing else. Analyses store the edges next
to every histogram.

**Parametric fits** (`fit_distributions`) to a flattened 1-D sample, by maximum likelihood, on at
most `max_samples` values (a fixed-seed `subsample`; the report says how many were used):

| family      | parameters (in this order) | shape parameter                                             |
|-------------|----------------------------|-------------------------------------------------------------|
| `gaussian`  | loc, scale (= std, ddof 0) |                                                             |
| `logistic`  | loc, scale                 |                                                             |
| `student_t` | nu, loc, scale             | nu small: heavy tails; nu -> inf: Gaussian (capped at 1000)  |
| `gennorm`   | beta, loc, scale           | beta 2 Gaussian, 1 Laplace, < 1 heavier tails, > 2 flatter  |

nu at the cap `NU_MAX` = 1000 means no tail weight detectable beyond Gaussian. gennorm is
scipy.stats.gennorm, density ∝ exp(-|(x - loc) / scale|^beta).

For each family: log-likelihood per sample (natural log, of the density in the data's own units, so
only differences between families on the same sample mean anything), AIC = 2k - 2 logL, BIC =
k ln n - 2 logL (k = number of parameters, n = samples fitted) and the Kolmogorov-Smirnov distance
sup |F_n - F| between the sample and the fitted cdf (scipy.stats.kstest's statistic). The best
family is the one with the smallest AIC (`best_family`; also by BIC, `best_family_bic`). AIC picks
a nested family (student_t, gennorm) over a truly Gaussian sample roughly one time in five, because
each extra parameter need only gain 1 nat; BIC, which needs about ln(n)/2 nats, almost never does.
Family codes (`FAMILIES` order): 0 gaussian, 1 logistic, 2 student_t, 3 gennorm.

The Gaussian is fitted in closed form, the logistic with scipy's `logistic.fit`, Student-t by BFGS
on the exact log-likelihood with its analytic gradient (`fit_student_t`; scipy's `t.fit` reaches
the same optimum but takes seconds on 10^5 samples) and gennorm by Nelder-Mead on the profile
likelihood with the scale in closed form (scipy's `gennorm.fit` searches all three parameters).
Tests check all three against scipy's own fits. Every fit runs on the sample standardised by its
median and robust scale, then is mapped back to the data's units.

**Power-law tail of |x|** (Clauset, Shalizi & Newman 2009): for a candidate x_min, the continuous
MLE alpha = 1 + n_tail / sum ln(|x| / x_min) over |x| >= x_min, density proportional to
|x|^-alpha; x_min is the candidate minimising the KS distance between the tail and the fitted
power law. Candidates: the |x| values whose tails hold n_tail between `min_tail` (100) and all
nonzero |x|, on `n_candidates` (100) log-spaced tail sizes. Reported: alpha, its standard error
(alpha - 1) / sqrt(n_tail), x_min, n_tail, tail fraction n_tail / n and the KS distance.

**QQ data** on fixed probabilities `QQ_PROBABILITIES` (1e-4, 1e-3, 0.01, 0.02, ..., 0.99, 0.999,
0.9999: the same every time, so QQ plots animate), as [n, 3] arrays (probability, model quantile,
sample quantile; numpy's default linear-interpolation quantiles of the fitted sample):
`qq_gaussian` against the fitted Gaussian; `qq_powerlaw`, for |x| within the fitted tail
(|x| >= x_min), against the fitted power law, p being the probability within the tail:
x_min (1 - p)^(-1 / (alpha - 1)).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from scipy import optimize, special, stats

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "FAMILIES",
    "FAMILY_PARAMETERS",
    "NU_MAX",
    "QQ_PROBABILITIES",
    "WEIGHT_BINS",
    "FamilyFit",
    "FitReport",
    "FixedBinHistogram",
    "PowerLawFit",
    "Reservoir",
    "RunningMoments",
    "SymlogBins",
    "fit_distributions",
    "fit_powerlaw_tail",
    "fit_student_t",
    "ks_distance",
    "subsample",
]

log = logging.getLogger(__name__)

FAMILIES = ("gaussian", "logistic", "student_t", "gennorm")
FAMILY_PARAMETERS = {
    "gaussian": ("loc", "scale"),
    "logistic": ("loc", "scale"),
    "student_t": ("nu", "loc", "scale"),
    "gennorm": ("beta", "loc", "scale"),
}
NU_MAX = 1000.0
NU_MIN = 0.1
DEFAULT_MAX_SAMPLES = 50_000
MIN_FIT_SAMPLES = 100
QQ_PROBABILITIES = np.concatenate([[1e-4, 1e-3], np.linspace(0.01, 0.99, 99), [0.999, 0.9999]])

# Tensors are processed in pieces of this many entries so temporaries stay small (W_E of a large
# model has 10^8 entries); the results do not depend on it.
_PIECE = 1 << 22
_MAX_TABLE_CELLS = 1 << 21

ArrayLike = torch.Tensor | np.ndarray | list | tuple


def _flat(x: ArrayLike) -> Float[np.ndarray, " n"]:
    """x as a 1-D numpy array (a view where possible): float32/float64 kept, other dtypes converted,
    exactly for float16/bfloat16 (subsets of float32). Tensors on an accelerator are copied to the CPU.

    The accumulators compute with numpy: single-threaded, it beats torch's thread pool on the
    small pieces most tensors are, and is close on large ones.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        elif t.dtype not in (torch.float32, torch.float64):
            t = t.double()
        return t.reshape(-1).cpu().numpy()
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a.reshape(-1)


def _pieces(x: np.ndarray):
    return (x[i : i + _PIECE] for i in range(0, len(x), _PIECE))


# ---------------------------------------------------------------------------------------------
# Streaming accumulators


@dataclass
class RunningMoments:
    """Mean, central moments and max |x| of everything passed to `update`, chunked or not."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum (x - mean)^2
    m3: float = 0.0
    m4: float = 0.0
    max_abs: float = 0.0

    @classmethod
    def of(cls, x: ArrayLike) -> RunningMoments:
        return cls().update(x)

    def update(self, chunk: ArrayLike) -> RunningMoments:
        for piece in _pieces(_flat(chunk)):
            self.merge(_piece_moments(piece))
        return self

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Combine with another accumulator (Pébay 2008, eq. 2.1-2.3); returns self."""
        na, nb = self.count, other.count
        if nb == 0:
            return self
        if na == 0:
            self.count, self.mean, self.m2, self.m3, self.m4, self.max_abs = (
                other.count, other.mean, other.m2, other.m3, other.m4, other.max_abs)  # fmt: skip
            return self
        n = na + nb
        delta = other.mean - self.mean
        m2 = self.m2 + other.m2 + delta**2 * na * nb / n
        m3 = (
            self.m3 + other.m3 + delta**3 * na * nb * (na - nb) / n**2
            + 3 * delta * (na * other.m2 - nb * self.m2) / n
        )  # fmt: skip
        m4 = (
            self.m4 + other.m4 + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6 * delta**2 * (na * na * other.m2 + nb * nb * self.m2) / n**2
            + 4 * delta * (na * other.m3 - nb * self.m3) / n
        )  # fmt: skip
        self.mean = self.mean + delta * nb / n
        self.count, self.m2, self.m3, self.m4 = n, m2, m3, m4
        self.max_abs = max(self.max_abs, other.max_abs) if not math.isnan(other.max_abs) else math.nan
        return self

    @property
    def variance(self) -> float:
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    @property
    def skew(self) -> float:
        if not self.count or self.m2 == 0:
            return math.nan
        return math.sqrt(self.count) * self.m3 / self.m2**1.5

    @property
    def excess_kurtosis(self) -> float:
        if not self.count or self.m2 == 0:
            return math.nan
        return self.count * self.m4 / self.m2**2 - 3.0


def _piece_moments(x: Float[np.ndarray, " n"]) -> RunningMoments:
    mean = float(x.mean(dtype=np.float64))
    d = np.subtract(x, mean, dtype=np.float64)
    d2 = d * d
    # einsum: sums of products without cube or fourth-power temporaries (and without BLAS threads).
    return RunningMoments(
        count=len(x), mean=mean, m2=float(d2.sum()), m3=float(np.einsum("i,i->", d2, d)),
        m4=float(np.einsum("i,i->", d2, d2)), max_abs=float(max(x.max(), -x.min())),
    )  # fmt: skip


@dataclass(frozen=True)
class SymlogBins:
    """Edges w*sinh(u), u evenly spaced on [-U, U], w*sinh(U) = max_abs: linear near 0, logarithmic beyond w."""

    linear_width: float
    max_abs: float
    n_bins: int

    def __post_init__(self):
        if not (self.linear_width > 0 and self.max_abs > self.linear_width):
            raise ValueError(f"SymlogBins needs 0 < linear_width < max_abs, got {self.linear_width}, {self.max_abs}")
        if self.n_bins < 2 or self.n_bins % 2:
            raise ValueError(f"SymlogBins needs an even n_bins >= 2 (so that 0 is an edge), got {self.n_bins}")

    def edges(self) -> np.ndarray:
        u_max = math.asinh(self.max_abs / self.linear_width)
        u = np.linspace(-u_max, u_max, self.n_bins + 1)
        edges = self.linear_width * np.sinh(u)
        edges[self.n_bins // 2] = 0.0
        edges[0], edges[-1] = -self.max_abs, self.max_abs
        return edges


WEIGHT_BINS = SymlogBins(linear_width=0.002, max_abs=10.0, n_bins=240)


class FixedBinHistogram:
    """Counts on fixed edges (numpy.histogram's convention), plus underflow, overflow and NaN counts."""

    def __init__(self, edges: ArrayLike):
        edges = np.asarray(edges, dtype=np.float64)
        if edges.ndim != 1 or len(edges) < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ValueError("histogram edges must be a 1-D array of at least 2 finite, strictly increasing numbers")
        self.edges = edges
        self.counts = np.zeros(len(edges) - 1, dtype=np.int64)
        self.underflow = 0
        self.overflow = 0
        self.nan_count = 0
        # For float32 data x, x >= e exactly when x >= (the smallest float32 >= e): binning float32
        # data on these edges gives the float64 result without converting the data.
        e32 = edges.astype(np.float32)
        e32 = np.where(e32.astype(np.float64) < edges, np.nextafter(e32, np.float32(np.inf)), e32)
        # Padded so that padded[k] = edges[k - 1]: the edges either side of "k edges <= x".
        self._padded = {
            np.dtype(np.float64): np.concatenate([[-np.inf], edges, [np.inf]]),
            np.dtype(np.float32): np.concatenate([[-np.inf], e32, [np.inf]]).astype(np.float32),
        }
        # Lookup table on a uniform grid of cells at most half the narrowest bin wide: a value's cell
        # gives its bin to within one, and one comparison each way makes it exact (three times
        # faster than a binary search). Edges too uneven for a small table use the binary search.
        span = edges[-1] - edges[0]
        n_cells = math.ceil(2 * span / np.diff(edges).min())
        self._table = None
        if n_cells <= _MAX_TABLE_CELLS:
            self._cell_width = span / n_cells
            cell_starts = edges[0] + self._cell_width * np.arange(n_cells)
            self._table = np.searchsorted(edges, cell_starts, side="right").astype(np.intp)

    @property
    def n_bins(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        """Every value counted, in bins or not, NaN included."""
        return int(self.counts.sum()) + self.underflow + self.overflow + self.nan_count

    def update(self, chunk: ArrayLike) -> FixedBinHistogram:
        x = _flat(chunk)
        padded = self._padded[x.dtype]
        # The last bin is closed on the right: values equal to the last edge (which a float32 value
        # can only be if that edge is a float32 number) belong in it.
        last = self.edges[-1] if x.dtype == np.float64 or np.float32(self.edges[-1]) == self.edges[-1] else None
        for piece in _pieces(x):
            is_nan = np.isnan(piece)
            nans = int(np.count_nonzero(is_nan))
            index = self._edges_at_or_below(piece, padded, is_nan if nans else None)
            full = np.bincount(index, minlength=self.n_bins + 2)
            at_last = int(np.count_nonzero(piece == last)) if last is not None else 0
            self.underflow += int(full[0])
            self.counts += full[1 : self.n_bins + 1]
            self.counts[-1] += at_last
            self.overflow += int(full[self.n_bins + 1]) - at_last - nans
            self.nan_count += nans
        return self

    def _edges_at_or_below(self, x: np.ndarray, padded: np.ndarray, is_nan: np.ndarray | None) -> np.ndarray:
        """How many edges are <= each value: 0 underflow, 1..n_bins a bin, n_bins + 1 beyond (and NaN)."""
        if self._table is None:
            return np.searchsorted(padded[1:-1], x, side="right")
        dtype = x.dtype.type
        cell = (x - dtype(self.edges[0])) * dtype(1 / self._cell_width)
        np.clip(cell, 0, len(self._table) - 1, out=cell)
        if is_nan is not None:
            cell[is_nan] = 0
        index = self._table[cell.astype(np.intp)]
        index -= x < padded[index]
        index += x >= padded[index + 1]
        if is_nan is not None:
            index[is_nan] = self.n_bins + 1
        return index


class Reservoir:
    """A seeded uniform sample of at most `capacity` values from a stream, independent of chunking.

    Value i of the stream (counting from 0 over all chunks) gets key i of
    `numpy.random.Generator(PCG64(seed)).random`; the values with the `capacity` smallest keys are
    kept (bottom-k sampling), returned in stream order.
    """

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.seen = 0
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._values = np.empty(0)
        self._keys = np.empty(0)
        self._index = np.empty(0, dtype=np.int64)

    def update(self, chunk: ArrayLike) -> Reservoir:
        x = _flat(chunk)
        n = len(x)
        keys = self._rng.random(n)
        keep = np.arange(n)
        if len(self._keys) >= self.capacity:
            keep = np.flatnonzero(keys < self._keys.max())
        values = x[keep].astype(np.float64)
        self._values = np.concatenate([self._values, values])
        self._keys = np.concatenate([self._keys, keys[keep]])
        self._index = np.concatenate([self._index, keep + self.seen])
        self.seen += n
        if len(self._keys) > self.capacity:
            smallest = np.argpartition(self._keys, self.capacity - 1)[: self.capacity]
            self._values, self._keys, self._index = self._values[smallest], self._keys[smallest], self._index[smallest]
        return self

    def sample(self) -> np.ndarray:
        return self._values[np.argsort(self._index, kind="stable")].copy()


def subsample(x: ArrayLike, max_samples: int, seed: int = 0) -> np.ndarray:
    """All of x (flattened, float64) if it has at most `max_samples` entries, else a seeded uniform sample
    without replacement of that many, in their original order."""
    flat = _flat(x)
    n = len(flat)
    if n <= max_samples:
        return flat.astype(np.float64)  # a copy: callers may modify it
    index = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    return flat[index].astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Fits


@dataclass(frozen=True)
class FamilyFit:
    family: str
    params: dict[str, float]
    loglik: float  # total over the fitted sample, natural log
    n: int
    ks: float

    @property
    def n_params(self) -> int:
        return len(self.params)

    @property
    def loglik_per_sample(self) -> float:
        return self.loglik / self.n

    @property
    def aic(self) -> float:
        return 2 * self.n_params - 2 * self.loglik

    @property
    def bic(self) -> float:
        return self.n_params * math.log(self.n) - 2 * self.loglik

    def frozen(self):
        """The fitted scipy.stats distribution."""
        return _frozen(self.family, self.params)


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float  # density ∝ |x|^-alpha above x_min
    alpha_stderr: float
    x_min: float
    n_tail: int
    tail_fraction: float
    ks: float

    def quantile(self, p: np.ndarray) -> np.ndarray:
        """Quantiles of the fitted power law (|x| given |x| >= x_min)."""
        return self.x_min * (1.0 - np.asarray(p)) ** (-1.0 / (self.alpha - 1.0))


@dataclass(frozen=True)
class FitReport:
    n_total: int  # values passed in
    n_fit: int  # values fitted (after subsampling)
    seed: int
    families: dict[str, FamilyFit]
    powerlaw: PowerLawFit
    qq_gaussian: np.ndarray = field(repr=False)  # [len(QQ_PROBABILITIES), 3]: p, model, sample
    qq_powerlaw: np.ndarray = field(repr=False)

    @property
    def subsampled(self) -> bool:
        return self.n_fit < self.n_total

    @property
    def best_family(self) -> str:
        """Smallest AIC among FAMILIES."""
        return min(FAMILIES, key=lambda f: self.families[f].aic)

    @property
    def best_family_bic(self) -> str:
        return min(FAMILIES, key=lambda f: self.families[f].bic)

    def scalars(self) -> dict[str, float]:
        """Flat, documented names: `<family>_<param>`, `<family>_{loglik_per_sample,aic,bic,ks}`,
        `best_family_index`, `best_family_bic_index` (codes: FAMILIES order), `powerlaw_*`,
        `n_fit_samples`, `subsampled` (1.0 or 0.0)."""
        out: dict[str, float] = {"n_fit_samples": float(self.n_fit), "subsampled": float(self.subsampled)}
        for name, fit in self.families.items():
            out.update({f"{name}_{p}": float(v) for p, v in fit.params.items()})
            out |= {
                f"{name}_loglik_per_sample": fit.loglik_per_sample, f"{name}_aic": fit.aic,
                f"{name}_bic": fit.bic, f"{name}_ks": fit.ks,
            }  # fmt: skip
        out["best_family_index"] = float(FAMILIES.index(self.best_family))
        out["best_family_bic_index"] = float(FAMILIES.index(self.best_family_bic))
        pl = self.powerlaw
        out |= {
            "powerlaw_alpha": pl.alpha, "powerlaw_alpha_stderr": pl.alpha_stderr, "powerlaw_xmin": pl.x_min,
            "powerlaw_n_tail": float(pl.n_tail), "powerlaw_tail_fraction": pl.tail_fraction, "powerlaw_ks": pl.ks,
        }  # fmt: skip
        return out


def fit_distributions(sample: ArrayLike, *, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> FitReport:
    """Fit Gaussian, logistic, Student-t, generalised normal and a power-law tail of |x| to a 1-D sample.

    `sample` is flattened; if it has more than `max_samples` values, a seeded uniform subsample of that
    many is fitted (`FitReport.n_fit`, `.subsampled`). Raises ValueError for non-finite values, fewer
    than MIN_FIT_SAMPLES values or a sample with no spread.
    """
    n_total = len(_flat(sample))
    x = subsample(sample, max_samples, seed)
    if len(x) < MIN_FIT_SAMPLES:
        raise ValueError(f"fit_distributions needs at least {MIN_FIT_SAMPLES} values, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("fit_distributions got non-finite values (NaN or inf); drop or fix them first")
    centre = float(np.median(x))
    spread = _robust_scale(x, centre)
    if spread == 0:
        raise ValueError("fit_distributions got a sample with no spread (all values equal)")
    n = len(x)
    z = (x - centre) / spread
    z_sorted = np.sort(z)
    standard = {
        "gaussian": {"loc": z.mean(), "scale": z.std()},
        "logistic": dict(zip(("loc", "scale"), stats.logistic.fit(z), strict=True)),
        "student_t": dict(zip(("nu", "loc", "scale"), fit_student_t(z, standardised=True), strict=True)),
        "gennorm": dict(zip(("beta", "loc", "scale"), _fit_gennorm(z), strict=True)),
    }
    families = {}
    for family, params in standard.items():
        dist, args = _scipy_distribution(family, params)  # unfrozen: freezing costs a millisecond each
        loglik = float(dist.logpdf(z, *args).sum()) - n * math.log(spread)  # density in the data's units
        data_params = params | {"loc": centre + spread * params["loc"], "scale": spread * params["scale"]}
        ks = _ks_sorted(z_sorted, _cdf(family, params))
        families[family] = FamilyFit(family, {k: float(v) for k, v in data_params.items()}, loglik, n, ks)
    powerlaw = fit_powerlaw_tail(np.abs(x))
    gauss = families["gaussian"].params
    qq_gaussian = np.column_stack([
        QQ_PROBABILITIES, gauss["loc"] + gauss["scale"] * stats.norm.ppf(QQ_PROBABILITIES),
        np.quantile(x, QQ_PROBABILITIES),
    ])  # fmt: skip
    tail = np.abs(x)[np.abs(x) >= powerlaw.x_min] if powerlaw.n_tail else np.array([np.nan])
    qq_powerlaw = np.column_stack(
        [QQ_PROBABILITIES, powerlaw.quantile(QQ_PROBABILITIES), np.quantile(tail, QQ_PROBABILITIES)]
    )
    return FitReport(n_total, n, seed, families, powerlaw, qq_gaussian, qq_powerlaw)


def _robust_scale(x: np.ndarray, centre: float) -> float:
    # Median absolute deviation, as a Gaussian std; the std where most values sit at the centre.
    mad = float(np.median(np.abs(x - centre))) * 1.4826
    return mad if mad > 0 else float(np.std(x))


def _scipy_distribution(family: str, params: dict[str, float]):
    """(scipy.stats distribution, its positional arguments) for a family's parameters."""
    if family not in FAMILY_PARAMETERS:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    dist = {"gaussian": stats.norm, "logistic": stats.logistic, "student_t": stats.t, "gennorm": stats.gennorm}[family]
    shape = FAMILY_PARAMETERS[family][:-2]
    return dist, tuple(params[p] for p in shape) + (params["loc"], params["scale"])


def _cdf(family: str, params: dict[str, float]):
    """The fitted cdf as a function. gennorm's through the lower incomplete gamma function, which is
    several times faster than scipy's upper one for non-integer 1/beta and exact to ~1e-16 absolute."""
    if family == "gennorm":
        beta, loc, scale = params["beta"], params["loc"], params["scale"]

        def cdf(v):
            r = (v - loc) / scale
            return 0.5 + 0.5 * np.sign(r) * special.gammainc(1 / beta, np.abs(r) ** beta)

        return cdf
    dist, args = _scipy_distribution(family, params)
    return lambda v: dist.cdf(v, *args)


def _frozen(family: str, params: dict[str, float]):
    dist, args = _scipy_distribution(family, params)
    return dist(*args)


def ks_distance(sample: ArrayLike, cdf) -> float:
    """sup |F_n(x) - cdf(x)|: scipy.stats.kstest(sample, cdf).statistic, for a callable cdf."""
    return _ks_sorted(np.sort(_flat(sample).astype(np.float64)), cdf)


def _ks_sorted(sorted_x: np.ndarray, cdf) -> float:
    n = len(sorted_x)
    f = cdf(sorted_x)
    above = np.arange(1, n + 1) / n - f
    below = f - np.arange(n) / n
    return float(max(above.max(), below.max()))


def fit_student_t(sample: ArrayLike, *, standardised: bool = False) -> tuple[float, float, float]:
    """Maximum-likelihood (nu, loc, scale) of a Student-t, nu in [NU_MIN, NU_MAX].

    BFGS on the exact log-likelihood and its analytic gradient in (loc, log scale, t), with
    log nu = log NU_MIN + (log NU_MAX - log NU_MIN) sigmoid(t) keeping nu in range; started at the
    median, the robust scale and nu from the excess kurtosis (6 / (nu - 4)). `standardised=True`
    skips rescaling for data already centred near 0 with spread near 1. (Unconstrained BFGS rather
    than L-BFGS-B: the latter's small LAPACK calls go through OpenBLAS threads, which cost
    milliseconds per iteration on a busy machine.)
    """
    x = _flat(sample).astype(np.float64)
    if standardised:
        centre, spread = 0.0, 1.0
    else:
        centre = float(np.median(x))
        spread = _robust_scale(x, centre)
    z = (x - centre) / spread
    n = len(z)
    low, high = math.log(NU_MIN), math.log(NU_MAX)
    kurt = stats.kurtosis(z)
    nu0 = float(np.clip(4 + 6 / kurt, 2.5, 100.0)) if kurt > 0 else 100.0
    s0 = (math.log(nu0) - low) / (high - low)

    def negative_loglik(theta):
        loc, log_scale, t = theta
        if abs(log_scale) > 50:  # a line-search probe e^50 times off the robust scale: refuse, do not overflow
            return np.inf, np.zeros(3)
        s = special.expit(t)
        scale, nu = math.exp(log_scale), math.exp(low + (high - low) * s)
        r = (z - loc) / scale
        r2 = r * r
        q = nu + r2
        log1p_term = np.log1p(r2 / nu)
        r2_over_q = (r2 / q).sum()
        loglik = n * (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * math.log(nu * math.pi)
                      - log_scale) - (nu + 1) / 2 * log1p_term.sum()  # fmt: skip
        d_loc = (nu + 1) / scale * (r / q).sum()
        d_log_scale = -n + (nu + 1) * r2_over_q
        d_nu = (n * 0.5 * (special.digamma((nu + 1) / 2) - special.digamma(nu / 2) - 1 / nu)
                - 0.5 * log1p_term.sum() + (nu + 1) / (2 * nu) * r2_over_q)  # fmt: skip
        d_t = d_nu * nu * (high - low) * s * (1 - s)
        return -loglik / n, -np.array([d_loc, d_log_scale, d_t]) / n

    start = np.array([0.0, 0.0, math.log(s0 / (1 - s0))])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        result = optimize.minimize(negative_loglik, start, jac=True, method="BFGS", options={"gtol": 1e-6})
    # BFGS may end with "precision loss" at the optimum when gtol asks for more than float64
    # gives; only a gradient still far from zero means a failed fit.
    if np.max(np.abs(result.jac)) > 1e-4:
        # Common on very heavy-tailed gradients; one line per fit would drown a sweep's output.
        log.info("Student-t fit did not converge (%s); reporting the last iterate", result.message)
    loc, log_scale, t = result.x
    nu = math.exp(low + (high - low) * special.expit(t))
    return nu, centre + spread * float(loc), spread * math.exp(log_scale)


def _fit_gennorm(z: np.ndarray) -> tuple[float, float, float]:
    """Maximum-likelihood (beta, loc, scale) of scipy.stats.gennorm.

    The scale has a closed form given (beta, loc): scale^beta = beta/n sum |z - loc|^beta, so
    Nelder-Mead searches the two-dimensional profile likelihood (scipy's gennorm.fit searches all
    three and takes about three times as long to reach the same optimum). The likelihood has a cusp
    at every data point when beta <= 1, hence no gradient method.
    """
    n = len(z)
    # Start beta where the kurtosis points (gennorm's excess kurtosis falls monotonically in beta).
    kurt = stats.kurtosis(z)
    betas = np.geomspace(0.2, 20, 200)
    kurts = special.gamma(5 / betas) * special.gamma(1 / betas) / special.gamma(3 / betas) ** 2 - 3
    beta0 = float(betas[np.argmin(np.abs(kurts - kurt))])
    log_abs, work = np.empty_like(z), np.empty_like(z)

    def profile(loc: float, beta: float) -> tuple[float, float]:
        # log(1/n sum |z - loc|^beta), shifted by the largest term so that no power overflows
        np.subtract(z, loc, out=log_abs)
        np.abs(log_abs, out=log_abs)
        np.log(log_abs, out=log_abs)
        top = log_abs.max()
        np.subtract(log_abs, top, out=work)
        np.multiply(work, beta, out=work)
        np.exp(work, out=work)
        log_mean_power = beta * top + math.log(work.sum() / n)
        log_scale = (math.log(beta) + log_mean_power) / beta
        per_sample = math.log(beta) - math.log(2) - log_scale - special.gammaln(1 / beta) - 1 / beta
        return per_sample, math.exp(log_scale)

    def objective(theta):
        loc, log_beta = theta
        if not -3.0 < log_beta < 5.0:  # beta outside [0.05, 150]: not a shape any data here has
            return np.inf
        return -profile(loc, math.exp(log_beta))[0]

    with np.errstate(divide="ignore"):  # a value equal to loc: log 0 = -inf, |0|^beta = 0, as it should
        result = optimize.minimize(objective, np.array([0.0, math.log(beta0)]), method="Nelder-Mead",
                                   options={"xatol": 1e-7, "fatol": 1e-12, "maxiter": 2000})  # fmt: skip
        loc, log_beta = result.x
        beta = math.exp(log_beta)
        scale = profile(loc, beta)[1]
    return beta, float(loc), scale


def fit_powerlaw_tail(values: ArrayLike, *, min_tail: int = 100, n_candidates: int = 100) -> PowerLawFit:
    """Clauset-Shalizi-Newman power-law fit to the upper tail of positive values (zeros are ignored).

    Returns NaNs (n_tail 0) when fewer than `min_tail` values are positive.
    """
    a = _flat(values).astype(np.float64)
    if np.any(a < 0):
        raise ValueError("fit_powerlaw_tail needs nonnegative values (pass |x|)")
    n_all = len(a)
    a = np.sort(a[a > 0])
    n = len(a)
    if n < min_tail:
        return PowerLawFit(math.nan, math.nan, math.nan, 0, 0.0, math.nan)
    logs = np.log(a)
    # suffix_log[i] = sum of logs[i:]
    suffix_log = np.concatenate([np.cumsum(logs[::-1])[::-1], [0.0]])
    sizes = np.unique(np.round(np.geomspace(min_tail, n, n_candidates)).astype(np.int64))
    # Ties (weights stored in 16 bits repeat values): a tail is every value >= its x_min.
    starts = np.unique(np.searchsorted(a, a[n - sizes], side="left"))
    best = None
    for start in starts:
        m = n - start
        x_min = a[start]
        sum_log_ratio = suffix_log[start] - m * logs[start]
        if sum_log_ratio <= 0:
            continue
        alpha = 1.0 + m / sum_log_ratio
        cdf = 1.0 - np.exp((1.0 - alpha) * (logs[start:] - logs[start]))
        ks = max((np.arange(1, m + 1) / m - cdf).max(), (cdf - np.arange(m) / m).max())
        if best is None or ks < best[0]:
            best = (float(ks), float(alpha), float(x_min), int(m))
    if best is None:
        return PowerLawFit(math.nan, math.nan, math.nan, 0, 0.0, math.nan)
    ks, alpha, x_min, m = best
    return PowerLawFit(alpha, (alpha - 1) / math.sqrt(m), x_min, m, m / n_all, ks)
