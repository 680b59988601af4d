"""Distributions of weights, activations and gradients: streaming summaries and parametric fits.

Shared by every analysis that describes a distribution of numbers. Three kinds of tool:

**Streaming accumulators** give the same numbers whether the data arrive whole or in chunks (an
activation analysis sees one batch at a time), so the two can be mixed freely:

- `RunningMoments`: count, mean, central moment sums M2, M3, M4 (Welford/Chan/Pébay parallel
  update, float64) and max |x|. `std` is the population standard deviation (ddof 0), `skew` =
  sqrt(n) M3 / M2^1.5 (scipy.stats.skew, bias=True), `excess_kurtosis` = n M4 / M2^2 - 3
  (scipy.stats.kurtosis, fisher=True, bias=True). A NaN anywhere makes every moment NaN. Pieces
  of 65,536 values are summed in float64 as powers of x - c, c the mean of the first piece, and
  converted to central sums; a piece whose mean lies more than 4 of its standard deviations from c
  is summed again about its own mean, so the cancellation error stays within a few float64 roundings.
- `FixedBinHistogram(edges)`: counts per bin with numpy.histogram's convention (bins half-open
  [e_i, e_i+1) except the last, which includes its right edge), plus `underflow` (x < edges[0]),
  `overflow` (x > edges[-1], +inf included) and `nan_count`, which no bin holds. float32 values
  find their bin by a table lookup on their top 20 bits (a cell of 4,096 consecutive float32
  numbers, 1/2048 of the value wide); the few cells that hold an edge, inf or NaN are compared
  with the edges one value at a time. `merge` adds a histogram on the same edges.
- `Reservoir(capacity, seed)`: a uniform sample without replacement of everything seen, the same
  however the stream was chunked (element i gets the i-th draw of a seeded generator as its key;
  the `capacity` smallest keys are kept). `subsample(x, k, seed)` is the one-shot equivalent for a
  tensor held whole (uniform without replacement; a different sample from `Reservoir`).

Tensors on an accelerator are summed and histogrammed where they are (torch). CPU data go through
numpy in cache-sized pieces, one thread each (callers spread whole tensors over threads): on a
shared CPU, torch's per-operation thread hand-offs cost more than they save.

**Fixed histogram bins** (`SymlogBins`): sweeps histogram every checkpoint on the same edges, chosen
before any checkpoint is seen, so histograms animate and overlay across steps, layers and models.
Edges are `w * sinh(u)` for `u` evenly spaced on [-U, U] with `w * sinh(U) = max_abs`: bins about
`w * du` wide near zero and a constant relative width `du` (about 7.7% for the weight scheme) in the
tails, so one table resolves both a Gaussian bulk and outliers orders of magnitude out. Zero is an
edge. Values beyond ±max_abs are counted as underflow/overflow. `WEIGHT_BINS`, used for every weight
matrix of every model, has `w` = 0.002 (a tenth of GPT-NeoX's initialisation std 0.02),
max_abs = 10 (500 init stds) and 240 bins; it depends on nothing else. Analyses store the edges next
to every histogram.

**Parametric fits** (`fit_distributions`; `fit_many` for several samples at once, with the same
results) to a flattened 1-D sample, by maximum likelihood, on at most `max_samples` values (a
fixed-seed `subsample`; the report says how many were used):

| family      | parameters (in this order) | shape parameter                                             |
|-------------|----------------------------|-------------------------------------------------------------|
| `gaussian`  | loc, scale (= std, ddof 0) |                                                             |
| `logistic`  | loc, scale                 |                                                             |
| `student_t` | nu, loc, scale             | nu small: heavy tails; nu -> inf: Gaussian (capped at 1000)  |
| `gennorm`   | beta, loc, scale           | beta 2 Gaussian, 1 Laplace, < 1 heavier tails, > 2 flatter  |

nu at the cap `NU_MAX` = 1000 means no tail weight detectable beyond Gaussian (the maximum over
nu in [0.1, 1000]). gennorm is scipy.stats.gennorm, density ∝ exp(-|(x - loc) / scale|^beta),
beta in [0.05, 150].

For each family: log-likelihood per sample (natural log, of the density in the data's own units, so
only differences between families on the same sample mean anything), AIC = 2k - 2 logL, BIC =
k ln n - 2 logL (k = number of parameters, n = samples fitted) and the Kolmogorov-Smirnov distance
sup |F_n - F| between the sample and the fitted cdf (scipy.stats.kstest's statistic). The best
family is the one with the smallest AIC (`best_family`; also by BIC, `best_family_bic`). AIC picks
a nested family (student_t, gennorm) over a truly Gaussian sample roughly one time in five, because
each extra parameter need only gain 1 nat; BIC, which needs about ln(n)/2 nats, almost never does.
Family codes (`FAMILIES` order): 0 gaussian, 1 logistic, 2 student_t, 3 gennorm.

How the maxima are found. `fit_many` fits the samples of a batch together, as rows of arrays
(numpy, float64, on the CPU: at most 50,000 values per sample; rows split over torch's CPU threads).
Each sample is sorted and standardised by its median and interquartile range (mapped back to the
data's units at the end; maximum likelihood does not depend on units). The Gaussian is closed form.
Logistic (loc, log scale), Student-t (loc, log scale, log nu) and gennorm (loc, log beta, with the
scale in closed form: scale^beta = beta/n sum |x - loc|^beta) are found by Newton's method with
analytic gradients and Hessians, first on a compressed copy of the sorted sample (the outer 1% at
each end exact, the rest in groups of 64 consecutive values, each replaced by its mean ± its
standard deviation with weight 32: the group's count, mean and variance kept), then polished on the
exact sample (exact gradient, compressed Hessian) until the Newton decrement, the log-likelihood
still to gain to second order, is below `_DECREMENT_TOL` = 1e-12 nats per value. The reported
log-likelihood is the exact one at the reported parameters. gennorm's loc where beta < 1.5 (a
likelihood with a cusp at every value, so no Newton step in loc) is found by golden-section search,
on the compressed sample and then with the values nearest loc exact, to 1e-7 of the scale; below
beta = 1 every value is a local maximum in loc and the search ends at one next to the best.

Tolerance, then: the log-likelihood is within 1e-12 nats per value of its maximum (gennorm with
beta < 1: 1e-8), which puts loc and scale within ~1e-8 relative of the exact maximiser (loc: of the
scale), beta within ~1e-7 and nu within ~1e-7 at nu = 10, ~2e-6 at nu = 150 (measured on 50k
samples); nu near the cap, where the likelihood is flat in nu, is only as well determined as that
flatness allows, by any optimiser. `tests/test_fits_batched.py` checks every family against scipy's
own generic `fit` on the same sample (to 1e-3 relative, loc to 1e-3 of the scale: scipy's optimiser
stops at about 1e-4) and that no parameter moved by 1e-4 raises the likelihood; loglik/AIC/KS
match scipy.stats at the reported parameters to 1e-9.

The KS distance is exact: the fitted cdf (scipy.special) is evaluated at every 64th sorted value;
between two evaluated values F_n and F are monotone, which bounds |F_n - F|, and values are
evaluated only where those bounds could reach the maximum (in rounds: every 16th value, every 4th,
each one): the same number as evaluating the cdf at every value.

**Power-law tail** (`fit_powerlaw_tail`, Clauset, Shalizi & Newman 2009; of |x| in `fit_distributions`),
one fitter for every caller: zeros are dropped; for a candidate x_min the tail is every value >= x_min
(n_tail of them), the continuous MLE is alpha = 1 + n_tail / sum ln(x / x_min) over the tail (density
proportional to x^-alpha), and its KS distance is D = max |F(x) - j / n_tail| over the tail's distinct
values x, F(x) = 1 - (x / x_min)^(1 - alpha) and j the number of tail values below x: the empirical cdf
just below each distinct value, as the `powerlaw` package computes it (and WeightWatcher, which does
not merge ties, on values without ties).
x_min is the candidate with the smallest D (the first of equal ones). Which x_min are candidates is the
caller's choice (`candidates`):

- `"all"`: every distinct value but the largest whose tail holds at least `min_tail` values: exactly
  Clauset et al.'s search and WeightWatcher's; `pythia_dynamics.analyses.spectra` uses it, with
  min_tail 2. `powerlaw.Fit(data, discrete=False)` gives the same alpha and x_min (~1e-15 on planted
  tails) where it computes the same thing: powerlaw 2.0 takes the closed-form alpha only within
  (1.5, 3] and rejects candidates whose alpha leaves (0, 3);
- an int k: the smallest value of the tails of k tail sizes spaced evenly in log between `min_tail` and
  all positive values, for large samples: `fit_distributions` uses k = `POWERLAW_TAIL_SIZES` (100)
  with `POWERLAW_MIN_TAIL` (100) on its up to 50,000 values (1.4 ms a sample against 0.3-0.7 s for
  "all"); alpha then lies within one standard error of the all-candidates fit (at most 0.63 of one in
  30 planted draws of 1,000 tail values).

Reported (`PowerLawFit`): alpha, its standard error (alpha - 1) / sqrt(n_tail), x_min, n_tail, tail
fraction n_tail / n (n: all values passed, zeros included) and D; NaN with n_tail 0 when fewer than
`min_tail` values are positive. Every candidate's D is first bounded from 129 of its tail's distinct
values, and computed exactly, in order of the lower bounds, only while it can still be the smallest:
the result is that of computing all of them (tested against an exhaustive search).

**QQ data** on fixed probabilities `QQ_PROBABILITIES` (1e-4, 1e-3, 0.01, 0.02, ..., 0.99, 0.999,
0.9999: the same every time, so QQ plots animate), as [n, 3] arrays (probability, model quantile,
sample quantile; numpy's default linear-interpolation quantiles of the fitted sample):
`qq_gaussian` against the fitted Gaussian; `qq_powerlaw`, for |x| within the fitted tail
(|x| >= x_min), against the fitted power law, p being the probability within the tail:
x_min (1 - p)^(-1 / (alpha - 1)).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from scipy import special, stats

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "FAMILIES",
    "FAMILY_PARAMETERS",
    "NU_MAX",
    "POWERLAW_MIN_TAIL",
    "POWERLAW_TAIL_SIZES",
    "QQ_PROBABILITIES",
    "WEIGHT_BINS",
    "FamilyFit",
    "FitReport",
    "FixedBinHistogram",
    "PowerLawFit",
    "Reservoir",
    "RunningMoments",
    "SymlogBins",
    "check_fit_sample",
    "fit_distributions",
    "fit_many",
    "fit_powerlaw_tail",
    "fit_student_t",
    "ks_distance",
    "subsample",
    "subsample_index",
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
BETA_MIN, BETA_MAX = math.exp(-3.0), math.exp(5.0)
DEFAULT_MAX_SAMPLES = 50_000
MIN_FIT_SAMPLES = 100
QQ_PROBABILITIES = np.concatenate([[1e-4, 1e-3], np.linspace(0.01, 0.99, 99), [0.999, 0.9999]])
# fit_distributions' power-law tail: x_min from this many log-spaced tail sizes of at least this many values
POWERLAW_TAIL_SIZES = 100
POWERLAW_MIN_TAIL = 100

# CPU data are processed in pieces of this many values, small enough that float64 temporaries stay
# in cache; accelerator tensors in large pieces. The results do not depend on either.
_PIECE = 1 << 16
_DEVICE_PIECE = 1 << 24
# Rows fitted as one batch: the Newton fits' float64 work arrays are ~10 x rows x max_samples, so
# a 410m-shaped checkpoint's 170 matrices at once would hold ~1.4 GB; 16 rows hold ~130 MB per thread.
_FIT_BATCH_ROWS = 16
_MAX_TABLE_CELLS = 1 << 21
# float32 histograms look each value's bin up by its top 20 bits (a cell of 4096 consecutive floats,
# 1/2048 of the value wide); values in the few cells that hold an edge are binned exactly.
_KEY_SHIFT = 12

ArrayLike = torch.Tensor | np.ndarray | list | tuple
Candidates = Literal["all"] | int  # fit_powerlaw_tail's candidate x_min: every distinct value, or k tail sizes


def _flat(x: ArrayLike, any_order: bool = False) -> Float[np.ndarray, " n"]:
    """x as a 1-D numpy array (a view where possible): float32/float64 kept, other dtypes converted,
    exactly for float16/bfloat16 (subsets of float32). Tensors on an accelerator are copied to the CPU.
    `any_order`: the values in memory order, a view of a transposed tensor too (W_U), for whatever
    does not depend on order (moments, histograms)."""
    a = _array(x)
    return a.ravel(order="K") if any_order else a.reshape(-1)


def _array(x: ArrayLike) -> np.ndarray:
    """x as a float32 or float64 numpy array of the same shape, sharing memory where it can."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        elif t.dtype not in (torch.float32, torch.float64):
            t = t.double()
        return t.cpu().numpy()
    a = np.asarray(x)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _on_accelerator(x: ArrayLike) -> bool:
    return isinstance(x, torch.Tensor) and x.device.type != "cpu"


def _pieces(x, size: int = _PIECE):
    return (x[i : i + size] for i in range(0, len(x), size))


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
        if _on_accelerator(chunk):
            for piece in _pieces(chunk.detach().reshape(-1), _DEVICE_PIECE):
                self.merge(_tensor_moments(piece))
            return self
        x = _flat(chunk, any_order=True)
        if not len(x):
            return self
        shift = float(x[:_PIECE].mean(dtype=np.float64))
        buffers = np.empty((2, min(len(x), _PIECE)))
        sums = np.zeros(4)  # sums of (x - shift)^k, k = 1..4, over the pieces near the shift
        count, low, high = 0, math.inf, -math.inf
        for piece in _pieces(x):
            piece_sums = _power_sums(piece, shift, buffers[:, : len(piece)])
            m = piece_sums[0] / len(piece)
            if m * m > 16 * max(piece_sums[1] / len(piece) - m * m, 0.0):
                # This piece's mean is far from the shift: its own accumulator, about its own mean.
                own = float(piece.mean(dtype=np.float64))
                self.merge(_central(_power_sums(piece, own, buffers[:, : len(piece)]), len(piece), own))
            else:
                sums += piece_sums
                count += len(piece)
            low, high = np.minimum(low, piece.min()), np.maximum(high, piece.max())  # NaN propagates
        if count:
            self.merge(_central(sums, count, shift))
        self.max_abs = math.nan if math.isnan(low + high) else max(self.max_abs, float(max(high, -low)))
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


def _power_sums(x: Float[np.ndarray, " n"], shift: float, buffers: Float[np.ndarray, "2 n"]) -> np.ndarray:
    d = np.subtract(x, shift, out=buffers[0], dtype=np.float64)
    d2 = np.multiply(d, d, out=buffers[1])
    # einsum: sums of products without cube or fourth-power temporaries (and without BLAS threads).
    return np.array([d.sum(), d2.sum(), np.einsum("i,i->", d2, d), np.einsum("i,i->", d2, d2)])


def _central(sums: np.ndarray, n: int, shift: float) -> RunningMoments:
    """Moments from sums of (x - shift)^k. Exact to a few roundings when the mean is within 4 standard
    deviations of the shift (true of the total when it is true of every piece, by Jensen)."""
    s1, s2, s3, s4 = sums
    m = s1 / n
    return RunningMoments(
        count=n, mean=shift + m, m2=s2 - n * m * m, m3=s3 - 3 * m * s2 + 2 * n * m**3,
        m4=s4 - 4 * m * s3 + 6 * m * m * s2 - 3 * n * m**4, max_abs=0.0,
    )  # fmt: skip


@torch.no_grad()
def _tensor_moments(x: Float[torch.Tensor, " n"]) -> RunningMoments:
    d = x.to(torch.float64, copy=True)
    mean = d.mean()
    d -= mean
    d2 = d * d
    low, high = torch.aminmax(x)
    m2, m3, m4 = torch.stack([d2.sum(), torch.dot(d2, d), torch.dot(d2, d2)]).tolist()
    return RunningMoments(len(x), mean.item(), m2, m3, m4, max(high.item(), -low.item()))


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

    @property
    def n_bins(self) -> int:
        return len(self.counts)

    @property
    def total(self) -> int:
        """Every value counted, in bins or not, NaN included."""
        return int(self.counts.sum()) + self.underflow + self.overflow + self.nan_count

    def update(self, chunk: ArrayLike) -> FixedBinHistogram:
        if _on_accelerator(chunk):
            return self._update_on_device(chunk.detach().reshape(-1))
        x = _flat(chunk, any_order=True)
        if x.dtype != np.float32 or len(x) < 4096:
            for piece in _pieces(x):
                self._add_exact(piece)
            return self
        # float32: each value's bin from its top 20 bits, except in the cells that hold an edge.
        key_table = _float32_key_table(self.edges.tobytes())
        full, exact = np.zeros(self.n_bins + 3, dtype=np.int64), []
        for piece in _pieces(x):
            index = np.take(key_table, piece.view(np.uint32) >> _KEY_SHIFT)
            full += np.bincount(index, minlength=self.n_bins + 3)
            exact.append(piece[index == self.n_bins + 2])
        self._add_indices(full[: self.n_bins + 2])
        self._add_exact(np.concatenate(exact))
        return self

    def merge(self, other: FixedBinHistogram) -> FixedBinHistogram:
        """Add the counts of a histogram on the same edges; returns self."""
        if not np.array_equal(other.edges, self.edges):
            raise ValueError("histograms on different edges cannot be merged")
        self.counts += other.counts
        self.underflow += other.underflow
        self.overflow += other.overflow
        self.nan_count += other.nan_count
        return self

    def _add_indices(self, full: np.ndarray) -> None:
        """full[k]: values with k edges at or below them (0 underflow, 1..n_bins a bin, n_bins + 1 overflow)."""
        self.underflow += int(full[0])
        self.counts += full[1 : self.n_bins + 1]
        self.overflow += int(full[self.n_bins + 1])

    def _add_exact(self, x: np.ndarray) -> None:
        if not len(x):
            return
        # The last bin is closed on the right: values equal to the last edge (which a float32 value
        # can only be if that edge is a float32 number) belong in it.
        last = self.edges[-1] if x.dtype == np.float64 or np.float32(self.edges[-1]) == self.edges[-1] else None
        is_nan = np.isnan(x)
        nans = int(np.count_nonzero(is_nan))
        index = _edges_at_or_below(self.edges.tobytes(), x, is_nan if nans else None)
        full = np.bincount(index, minlength=self.n_bins + 2)
        at_last = int(np.count_nonzero(x == last)) if last is not None else 0
        full[self.n_bins] += at_last
        full[self.n_bins + 1] -= at_last + nans
        self._add_indices(full)
        self.nan_count += nans

    @torch.no_grad()
    def _update_on_device(self, x: torch.Tensor) -> FixedBinHistogram:
        edges = torch.as_tensor(self.edges, device=x.device)
        for piece in _pieces(x, _DEVICE_PIECE):
            values = piece.double()  # float64 holds every float16/bfloat16/float32 value exactly
            index = torch.bucketize(values, edges, right=True)
            index[values == edges[-1]] = self.n_bins
            index[torch.isnan(values)] = self.n_bins + 2
            full = torch.bincount(index, minlength=self.n_bins + 3).cpu().numpy()
            self._add_indices(full)
            self.nan_count += int(full[self.n_bins + 2])
        return self


def _edges_at_or_below(edges_bytes: bytes, x: np.ndarray, is_nan: np.ndarray | None) -> np.ndarray:
    """How many edges are <= each value: 0 underflow, 1..n_bins a bin, n_bins + 1 beyond (and NaN)."""
    padded, table, cell_width = _bin_tables(edges_bytes, x.dtype)
    if table is None or len(x) < 1024:
        return np.searchsorted(padded[1:-1], x, side="right")
    dtype = x.dtype.type
    cell = (x - dtype(padded[1])) * dtype(1 / cell_width)
    np.clip(cell, 0, len(table) - 1, out=cell)
    if is_nan is not None:
        cell[is_nan] = 0
    index = table[cell.astype(np.intp)]
    index -= x < padded[index]
    index += x >= padded[index + 1]
    if is_nan is not None:
        index[is_nan] = len(padded) - 2
    return index


@functools.lru_cache(maxsize=16)
def _bin_tables(edges_bytes: bytes, dtype: np.dtype):
    """(padded edges, lookup table or None, its cell width) for binning values of this dtype.

    Padded so that padded[k] = edges[k - 1]: the edges either side of "k edges <= x". For float32 data
    x, x >= e exactly when x >= (the smallest float32 >= e): binning float32 data on those edges gives
    the float64 result without converting the data. The lookup table is on a uniform grid of cells at
    most half the narrowest bin wide: a value's cell gives its bin to within one, and one comparison
    each way makes it exact (three times faster than a binary search). Edges too uneven for a small
    table use the binary search.
    """
    edges = np.frombuffer(edges_bytes, dtype=np.float64)
    if dtype == np.float32:
        e32 = edges.astype(np.float32)
        e32 = np.where(e32.astype(np.float64) < edges, np.nextafter(e32, np.float32(np.inf)), e32)
        padded = np.concatenate([[-np.inf], e32, [np.inf]]).astype(np.float32)
    else:
        padded = np.concatenate([[-np.inf], edges, [np.inf]])
    span = edges[-1] - edges[0]
    n_cells = math.ceil(2 * span / np.diff(edges).min())
    if n_cells > _MAX_TABLE_CELLS:
        return padded, None, None
    cell_width = span / n_cells
    table = np.searchsorted(edges, edges[0] + cell_width * np.arange(n_cells), side="right").astype(np.intp)
    return padded, table, cell_width


@functools.lru_cache(maxsize=8)
def _float32_key_table(edges_bytes: bytes) -> np.ndarray:
    """Bin index (edges at or below the value) of every float32 value in each cell of 2^_KEY_SHIFT
    consecutive bit patterns, or n_bins + 2 where the cell holds an edge, inf or NaN (binned exactly)."""
    edges = np.frombuffer(edges_bytes, dtype=np.float64)
    n_cells = 1 << (32 - _KEY_SHIFT)
    first = np.arange(n_cells, dtype=np.uint64) << np.uint64(_KEY_SHIFT)
    last = first + np.uint64((1 << _KEY_SHIFT) - 1)
    with np.errstate(invalid="ignore"):
        a = first.astype(np.uint32).view(np.float32).astype(np.float64)
        b = last.astype(np.uint32).view(np.float32).astype(np.float64)
    low, high = np.fmin(a, b), np.fmax(a, b)
    special_values = (first.astype(np.uint32) & 0x7F800000) == 0x7F800000  # inf and NaN
    below_low = np.searchsorted(edges, low, side="right")
    below_high = np.searchsorted(edges, high, side="right")
    exact = special_values | (below_low != below_high) | ((low <= edges[-1]) & (edges[-1] <= high))
    n_bins = len(edges) - 1
    dtype = np.uint8 if n_bins + 2 < 256 else np.int16 if n_bins + 2 < 32768 else np.int32
    return np.where(exact, n_bins + 2, below_low).astype(dtype)


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
        # Only the chunk's `capacity` smallest keys can be among the smallest overall: gather just those
        # (a gradient matrix arrives as one chunk of millions of values, of which 16,384 are kept).
        keep = np.argpartition(keys, self.capacity - 1)[: self.capacity] if n > self.capacity else np.arange(n)
        if len(self._keys) >= self.capacity:
            keep = keep[keys[keep] < self._keys.max()]
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


@functools.lru_cache(maxsize=32)
def subsample_index(n: int, max_samples: int, seed: int = 0) -> np.ndarray:
    """The sorted positions `subsample` keeps of n values (all of them if n <= max_samples); read-only,
    cached: a tensor of fixed size gives the same positions at every checkpoint."""
    if n <= max_samples:
        index = np.arange(n)
    else:
        index = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    index.flags.writeable = False
    return index


def subsample(x: ArrayLike, max_samples: int, seed: int = 0, *, dtype=np.float64) -> np.ndarray:
    """All of x (flattened, float64) if it has at most `max_samples` entries, else a seeded uniform sample
    without replacement of that many, in their original order; a copy. `dtype=None` keeps float32."""
    values = _gather(x, subsample_index(_numel(x), max_samples, seed))
    return values.astype(dtype or values.dtype)


def _numel(x: ArrayLike) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else np.size(x)


def _gather(x: ArrayLike, index: np.ndarray) -> np.ndarray:
    """x.flatten()[index] on the CPU (float32 or float64), gathered where x lives, without flattening
    (a copy) a transposed tensor."""
    if _on_accelerator(x):
        x = x.detach()
        position = np.unravel_index(index, tuple(x.shape))
        return _flat(x[tuple(torch.from_numpy(p).to(x.device) for p in position)])
    a = _array(x)
    if len(index) == a.size:
        return a.reshape(-1)
    return a[np.unravel_index(index, a.shape)] if a.ndim > 1 else a[index]


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

    @classmethod
    def nan(cls) -> PowerLawFit:
        """No fit: too few values."""
        return cls(math.nan, math.nan, math.nan, 0, 0.0, math.nan)

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


def check_fit_sample(sample: ArrayLike) -> None:
    """Raise ValueError if `fit_distributions` cannot fit this (already subsampled) sample."""
    x = _flat(sample)
    if len(x) < MIN_FIT_SAMPLES:
        raise ValueError(f"fit_distributions needs at least {MIN_FIT_SAMPLES} values, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("fit_distributions got non-finite values (NaN or inf); drop or fix them first")
    if x.min() == x.max():
        raise ValueError("fit_distributions got a sample with no spread (all values equal)")


def fit_distributions(sample: ArrayLike, *, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> FitReport:
    """Fit Gaussian, logistic, Student-t, generalised normal and a power-law tail of |x| to a 1-D sample.

    `sample` is flattened; if it has more than `max_samples` values, a seeded uniform subsample of that
    many is fitted (`FitReport.n_fit`, `.subsampled`). Raises ValueError for non-finite values, fewer
    than MIN_FIT_SAMPLES values or a sample with no spread.
    """
    return fit_many([sample], max_samples=max_samples, seed=seed)[0]


def fit_many(samples: Sequence[ArrayLike], *, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0) -> list[FitReport]:
    """`fit_distributions` of each sample, computed together: samples of equal size are fitted as the
    rows of one batch (a checkpoint's weight matrices in one go), split over torch's CPU threads
    (numpy releases the GIL in its loops). The same reports, in order."""
    drawn = []
    for sample in samples:
        n_total = _numel(sample)
        x = _gather(sample, subsample_index(n_total, max_samples, seed))
        check_fit_sample(x)
        drawn.append((n_total, x))
    batches = []
    for size in sorted({len(x) for _, x in drawn}):
        rows = [i for i, (_, x) in enumerate(drawn) if len(x) == size]
        n_parts = max(min(len(rows), torch.get_num_threads()), math.ceil(len(rows) / _FIT_BATCH_ROWS))
        batches += [list(part) for part in np.array_split(rows, n_parts)]

    def fit(rows: list[int]) -> list[FitReport]:
        return _fit_rows(np.stack([drawn[i][1] for i in rows]), [drawn[i][0] for i in rows], seed)

    reports = {}
    with ThreadPoolExecutor(max(1, min(len(batches), torch.get_num_threads()))) as pool:
        for rows, fitted in zip(batches, pool.map(fit, batches), strict=True):
            reports.update(zip(rows, fitted, strict=True))
    return [reports[i] for i in range(len(drawn))]


def _fit_rows(x: Float[np.ndarray, "batch n"], n_totals: list[int], seed: int) -> list[FitReport]:
    x_sorted = np.sort(x, axis=1)  # in the sample's own dtype: float32 weights sort twice as fast
    xs = x_sorted.astype(np.float64)
    n = xs.shape[1]
    centre, spread = _centre_and_spread(xs)
    z = (xs - centre[:, None]) / spread[:, None]
    compressed = _compress(z)
    scale = z.std(1)
    standard = {  # parameters and log-likelihoods in standardised units
        "gaussian": {"loc": z.mean(1), "scale": scale, "loglik": -0.5 * n * (np.log(2 * np.pi * scale**2) + 1)},
        "logistic": _fit_logistic(z, compressed),
        "student_t": _fit_student_t(z, compressed),
        "gennorm": _fit_gennorm(z, compressed),
    }
    ks = {family: _ks_rows(z, _cdf(family, params)) for family, params in standard.items()}
    abs_sorted = np.sort(np.abs(x_sorted), axis=1, kind="stable").astype(np.float64)  # merges two sorted runs
    sample_quantiles = _sorted_quantiles(xs, QQ_PROBABILITIES)
    reports = []
    for row, n_total in enumerate(n_totals):
        families = {}
        for family, params in standard.items():
            names = FAMILY_PARAMETERS[family]
            values = {p: float(params[p][row]) for p in names}
            values |= {"loc": centre[row] + spread[row] * values["loc"], "scale": spread[row] * values["scale"]}
            loglik = float(params["loglik"][row]) - n * math.log(spread[row])  # density in the data's units
            families[family] = FamilyFit(family, values, loglik, n, float(ks[family][row]))
        powerlaw, tail = _powerlaw_sorted(abs_sorted[row], n, POWERLAW_TAIL_SIZES, POWERLAW_MIN_TAIL)
        g = families["gaussian"].params
        qq_gaussian = np.column_stack(
            [QQ_PROBABILITIES, g["loc"] + g["scale"] * stats.norm.ppf(QQ_PROBABILITIES), sample_quantiles[row]]
        )
        tail_quantiles = _sorted_quantiles(tail[None], QQ_PROBABILITIES)[0] if len(tail) else QQ_PROBABILITIES * np.nan
        qq_powerlaw = np.column_stack([QQ_PROBABILITIES, powerlaw.quantile(QQ_PROBABILITIES), tail_quantiles])
        reports.append(FitReport(n_total, n, seed, families, powerlaw, qq_gaussian, qq_powerlaw))
    return reports


def _sorted_quantiles(xs: Float[np.ndarray, "batch n"], p: np.ndarray) -> Float[np.ndarray, "batch q"]:
    """numpy.quantile(row, p) (its default, 'linear' method, bit for bit) of sorted rows, without the
    partition numpy.quantile would do: index (n - 1) p, interpolated as numpy's _lerp does."""
    n = xs.shape[1]
    virtual = (n - 1) * p
    below = np.floor(virtual).astype(np.intp)
    at_end = virtual >= n - 1
    below = np.where(at_end, n - 1, below)
    above = np.where(at_end, n - 1, below + 1)
    gamma = virtual - below
    a, b = xs[:, below], xs[:, above]
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def _centre_and_spread(xs: Float[np.ndarray, "batch n"]) -> tuple[np.ndarray, np.ndarray]:
    """Median and interquartile range / 1.349 (a Gaussian's std) of sorted rows; the std where the IQR is 0."""
    n = xs.shape[1]
    centre = 0.5 * (xs[:, (n - 1) // 2] + xs[:, n // 2])
    spread = (xs[:, (3 * (n - 1)) // 4] - xs[:, (n - 1) // 4]) / 1.349
    flat = spread == 0
    if flat.any():
        spread[flat] = xs[flat].std(1)
    return centre, spread


def _scipy_distribution(family: str, params: dict[str, float]):
    """(scipy.stats distribution, its positional arguments) for a family's parameters."""
    if family not in FAMILY_PARAMETERS:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    dist = {"gaussian": stats.norm, "logistic": stats.logistic, "student_t": stats.t, "gennorm": stats.gennorm}[family]
    shape = FAMILY_PARAMETERS[family][:-2]
    return dist, tuple(params[p] for p in shape) + (params["loc"], params["scale"])


def _frozen(family: str, params: dict[str, float]):
    dist, args = _scipy_distribution(family, params)
    return dist(*args)


def _cdf(family: str, params: dict[str, np.ndarray]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The fitted cdfs of a batch, as cdf(values, rows): values[i] under the fit of row rows[i]
    (scipy.special: gennorm's through the lower incomplete gamma function, several times faster
    than scipy's upper one for non-integer 1/beta and exact to ~1e-16 absolute)."""

    def standardised(v, rows):
        return (v - params["loc"][rows]) / params["scale"][rows]

    if family == "gaussian":
        return lambda v, rows: special.ndtr(standardised(v, rows))
    if family == "logistic":
        return lambda v, rows: special.expit(standardised(v, rows))
    if family == "student_t":
        return lambda v, rows: special.stdtr(params["nu"][rows], standardised(v, rows))
    if family == "gennorm":

        def cdf(v, rows):
            r, beta = standardised(v, rows), params["beta"][rows]
            return 0.5 + 0.5 * np.sign(r) * special.gammainc(1 / beta, np.abs(r) ** beta)

        return cdf
    raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")


def ks_distance(sample: ArrayLike, cdf) -> float:
    """sup |F_n(x) - cdf(x)|: scipy.stats.kstest(sample, cdf).statistic, for a callable cdf."""
    return float(_ks_rows(np.sort(_flat(sample).astype(np.float64))[None], lambda v, rows: cdf(v))[0])


_KS_STEPS = (64, 16, 4, 1)


def _ks_rows(sorted_rows: Float[np.ndarray, "batch n"], cdf) -> np.ndarray:
    """sup |F_n - F| per row, F = cdf(values, rows) monotone. F is evaluated on every 64th value;
    between two evaluated values F_n and F are monotone, which bounds |F_n - F| there; cells whose
    bound could reach the largest distance found are evaluated every 16th value, and so on to every
    value. The same maximum as evaluating F everywhere, at a few percent of the cost."""
    batch, n = sorted_rows.shape
    grid = np.unique(np.r_[np.arange(0, n, _KS_STEPS[0]), n - 1])
    rows = np.repeat(np.arange(batch), len(grid))
    index = np.tile(grid, batch)
    f = cdf(sorted_rows[rows, index], rows)
    best = _ks_terms(f, index, n).reshape(batch, len(grid)).max(1)
    # Cells: consecutive evaluated values of a row, (row, lo, hi, F(lo), F(hi)).
    same_row = rows[1:] == rows[:-1]
    cell = (rows[:-1][same_row], index[:-1][same_row], index[1:][same_row], f[:-1][same_row], f[1:][same_row])
    for step in _KS_STEPS[1:]:
        c_rows, lo, hi, f_lo, f_hi = cell
        # Inside (lo, hi): (i + 1)/n - F(x_i) <= hi/n - F(lo) and F(x_i) - i/n <= F(hi) - (lo + 1)/n.
        bound = np.maximum(hi / n - f_lo, f_hi - (lo + 1) / n)
        keep = (hi - lo > 1) & (bound > best[c_rows] - 1e-12)
        c_rows, lo, hi, f_lo, f_hi = (a[keep] for a in cell)
        if not len(lo):
            break
        # New values every `step` strictly inside each kept cell.
        counts = (hi - lo - 1) // step
        owner = np.repeat(np.arange(len(lo)), counts)
        offset = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 1) * step
        new_index = lo[owner] + offset
        new_rows = c_rows[owner]
        new_f = cdf(sorted_rows[new_rows, new_index], new_rows)
        np.maximum.at(best, new_rows, _ks_terms(new_f, new_index, n))
        # Sub-cells: the kept cells' ends with the new values between them, in order.
        starts = np.cumsum(counts + 2) - (counts + 2)
        total = int((counts + 2).sum())
        all_index = np.empty(total, dtype=np.int64)
        all_f = np.empty(total)
        all_owner = np.repeat(np.arange(len(lo)), counts + 2)
        inner = np.ones(total, dtype=bool)
        inner[starts] = False
        inner[starts + counts + 1] = False
        all_index[starts], all_f[starts] = lo, f_lo
        all_index[starts + counts + 1], all_f[starts + counts + 1] = hi, f_hi
        all_index[inner], all_f[inner] = new_index, new_f
        pair = all_owner[1:] == all_owner[:-1]
        first, second = np.flatnonzero(pair), np.flatnonzero(pair) + 1
        cell = (c_rows[all_owner[first]], all_index[first], all_index[second], all_f[first], all_f[second])
    return best


def _ks_terms(f: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    """max(F_n(x_i) - F(x_i), F(x_i) - F_n(x_i-)) for the i-th smallest of n values."""
    return np.maximum((index + 1) / n - f, f - index / n)


# Batched maximum likelihood. Every row of a batch is a sample, standardised to median 0 and
# interquartile range 1.349; parameters are in those units.

# Polishing stops when the Newton decrement is below this many nats per value.
_DECREMENT_TOL = 1e-12
_TAIL_FRACTION = 0.01  # kept exact at each end of the compressed sample
_GROUP = 64  # consecutive sorted values per group of the compressed sample
_LOG_NU = (math.log(NU_MIN), math.log(NU_MAX))
_LOG_BETA = (math.log(BETA_MIN), math.log(BETA_MAX))
_SMOOTH_BETA = 1.5  # below, gennorm's likelihood has a cusp too sharp at each value for Newton in loc


@dataclass(frozen=True)
class _Sample:
    """Values (rows) with weights: the exact sample (weights None) or a compressed one."""

    values: Float[np.ndarray, "batch m"]
    weights: Float[np.ndarray, "batch m"] | None
    n: int  # values each row stands for (the weights' sum)

    def rows(self, rows) -> _Sample:
        if isinstance(rows, np.ndarray) and rows.dtype == bool and rows.all():
            return self  # every row: no copy
        return _Sample(self.values[rows], None if self.weights is None else self.weights[rows], self.n)

    def sum(self, terms: np.ndarray) -> np.ndarray:
        return terms.sum(1) if self.weights is None else np.einsum("bm,bm->b", terms, self.weights)


def _compress(z: Float[np.ndarray, "batch n"]) -> _Sample:
    """The sorted rows with the outer `_TAIL_FRACTION` at each end exact and the rest in groups of
    `_GROUP` consecutive values, each replaced by mean ± std with half the group's weight (count,
    mean and variance of every group kept). Sums of smooth functions over it match the exact sample's
    to about (group width / curvature scale)^3; a start for Newton on the exact sample."""
    batch, n = z.shape
    tail = math.ceil(_TAIL_FRACTION * n)
    n_groups = (n - 2 * tail) // _GROUP
    if n_groups < 16:
        return _Sample(z, None, n)
    end = tail + n_groups * _GROUP
    groups = z[:, tail:end].reshape(batch, n_groups, _GROUP)
    mean, std = groups.mean(2), groups.std(2)
    values = np.concatenate([z[:, :tail], mean - std, mean + std, z[:, end:]], 1)
    weights = np.ones_like(values)
    weights[:, tail : tail + 2 * n_groups] = _GROUP / 2
    return _Sample(values, weights, n)


def _newton_step(
    theta: Float[np.ndarray, "batch k"], grad: Float[np.ndarray, "batch k"], hess: Float[np.ndarray, "batch k k"],
    lower: Float[np.ndarray, " k"], upper: Float[np.ndarray, " k"],
) -> Float[np.ndarray, "batch k"]:
    """The Newton step for maximising, kept in the box [lower, upper]: coordinates at a bound with the
    gradient pointing out stay, as do coordinates the step would carry straight out; the rest of the
    step is shortened along its own direction (so it still climbs) to end in the box. A Hessian that is
    not negative definite is made so by taking its eigenvalues' magnitudes."""
    free = ~(((theta <= lower) & (grad < 0)) | ((theta >= upper) & (grad > 0)))
    for _ in range(2):
        step = _free_step(grad, hess, free)
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(step > 0, (upper - theta) / step, np.where(step < 0, (lower - theta) / step, np.inf))
        blocked = room < 1e-6
        if not blocked.any():
            break
        free &= ~blocked
    return step * np.minimum(1.0, room.min(1))[:, None]


def _free_step(grad, hess, free):
    both = free[:, :, None] & free[:, None, :]
    curvature = np.where(both, -hess, 0.0) + np.eye(grad.shape[1]) * ~free[:, None, :]
    eigenvalues, vectors = np.linalg.eigh(curvature)
    eigenvalues = np.abs(eigenvalues)
    eigenvalues = np.maximum(eigenvalues, 1e-12 * eigenvalues.max(1, keepdims=True) + 1e-300)
    g = np.where(free, grad, 0.0)
    return np.einsum("bij,bj->bi", vectors, np.einsum("bji,bj->bi", vectors, g) / eigenvalues)


def _newton(objective, theta, lower, upper, n: int, max_iter: int = 100):
    """Maximise objective(theta, rows) -> (value [b], gradient [b, k], hessian [b, k, k]) for every row
    by projected Newton with backtracking, until the Newton decrement is far below `_DECREMENT_TOL`."""
    theta = theta.copy()
    value, grad, hess = objective(theta, slice(None))
    active = np.ones(len(theta), dtype=bool)
    for _ in range(max_iter):
        step = _newton_step(theta, grad, hess, lower, upper)
        gain = np.einsum("bk,bk->b", grad, step)  # twice the Newton decrement
        active &= gain > 1e-3 * _DECREMENT_TOL * n
        if not active.any():
            break
        pending = np.flatnonzero(active)
        size = np.ones(len(pending))
        for _ in range(50):
            trial = theta[pending] + size[:, None] * step[pending]
            v, g, h = objective(trial, pending)
            ok = v >= value[pending] + 1e-4 * size * gain[pending] - _rounding(value[pending], n)
            accepted = pending[ok]
            theta[accepted], value[accepted], grad[accepted], hess[accepted] = trial[ok], v[ok], g[ok], h[ok]
            pending, size = pending[~ok], size[~ok] / 2
            if not len(pending):
                break
        active[pending] = False  # no ascent along the step: at the maximum to rounding
    return theta, value, grad, hess


def _rounding(value: np.ndarray, n: int) -> np.ndarray:
    """Rounding error of a log-likelihood summed over n values (its constant terms reach thousands
    when nu does): changes this small are noise to a line search."""
    return 1e-12 * (np.abs(value) + n)


def _polish(exact, approximate, theta, lower, upper, n: int, max_passes: int = 8):
    """Newton on the exact sample from (near) its maximum: exact(theta, rows) -> (value, gradient),
    approximate(theta, rows) -> (..., hessian) from the compressed sample. Returns the parameters and
    the exact log-likelihood there, once the Newton decrement is below `_DECREMENT_TOL` per value."""
    theta = theta.copy()
    value = np.full(len(theta), -np.inf)
    rows = np.arange(len(theta))
    for attempt in range(max_passes):
        v, g = exact(theta[rows], rows)
        worse = v < value[rows] - _rounding(v, n)  # lost likelihood (not expected this close): keep the last point
        if worse.any():
            theta[rows[worse]] = previous[worse]
        value[rows[~worse]] = v[~worse]
        rows, v, g = rows[~worse], v[~worse], g[~worse]
        if not len(rows):
            break
        step = _newton_step(theta[rows], g, approximate(theta[rows], rows)[2], lower, upper)
        done = 0.5 * np.einsum("bk,bk->b", g, step) <= _DECREMENT_TOL * n
        if attempt == max_passes - 1 and not done.all():
            log.info("%d fits stopped before the exact sample's maximum (decrement tolerance)", (~done).sum())
            break
        rows, step = rows[~done], step[~done]
        previous = theta[rows].copy()
        theta[rows] += step
        if not len(rows):
            break
    return theta, value


def _box(*bounds) -> tuple[np.ndarray, np.ndarray]:
    return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])


def _moment_ratio(sample: _Sample) -> np.ndarray:
    """Excess kurtosis of each row (a starting point for the shape parameters)."""
    mean = sample.sum(sample.values) / sample.n
    d2 = (sample.values - mean[:, None]) ** 2
    return sample.n * sample.sum(d2 * d2) / sample.sum(d2) ** 2 - 3


# --- logistic: theta = (loc, log scale)


def _logistic_terms(sample: _Sample, theta, hessian: bool = True):
    loc, log_scale = theta.T
    inv_scale = np.exp(-log_scale)[:, None]
    r = (sample.values - loc[:, None]) * inv_scale
    a = np.abs(r)
    e = np.exp(-a)
    u = (1 - e) / (1 + e)  # tanh(|r| / 2)
    # logpdf = -|r| - 2 log(1 + exp(-|r|)) - log scale
    value = -sample.sum(a + 2 * np.log1p(e)) - sample.n * log_scale
    s_tanh, s_r_tanh = sample.sum(np.copysign(u, r)), sample.sum(a * u)
    grad = np.stack([s_tanh * inv_scale[:, 0], s_r_tanh - sample.n], 1)
    if not hessian:
        return value, grad
    v = 1 - u * u  # sech^2(r / 2)
    s_v, s_rv, s_r2v = sample.sum(v), sample.sum(r * v), sample.sum(a * a * v)
    h11 = -0.5 * s_v * inv_scale[:, 0] ** 2
    h12 = -(s_tanh + 0.5 * s_rv) * inv_scale[:, 0]
    h22 = -(s_r_tanh + 0.5 * s_r2v)
    return value, grad, np.stack([np.stack([h11, h12], 1), np.stack([h12, h22], 1)], 1)


def _fit_logistic(z: Float[np.ndarray, "batch n"], compressed: _Sample) -> dict[str, np.ndarray]:
    exact = _Sample(z, None, z.shape[1])
    start = np.column_stack([np.zeros(len(z)), np.full(len(z), math.log(math.sqrt(3) / math.pi))])
    lower, upper = _box((-np.inf, np.inf), (-np.inf, np.inf))
    approximate = lambda theta, rows: _logistic_terms(compressed.rows(rows), theta)  # noqa: E731
    theta = _newton(approximate, start, lower, upper, exact.n)[0]
    theta, loglik = _polish(lambda t, rows: _logistic_terms(exact.rows(rows), t, hessian=False), approximate,
                            theta, lower, upper, exact.n)  # fmt: skip
    return {"loc": theta[:, 0], "scale": np.exp(theta[:, 1]), "loglik": loglik}


# --- Student-t: theta = (loc, log scale, log nu)


def _student_t_terms(sample: _Sample, theta, hessian: bool = True):
    loc, log_scale, log_nu = theta.T
    nu, inv_scale, count = np.exp(log_nu), np.exp(-log_scale), sample.n
    r = (sample.values - loc[:, None]) * inv_scale[:, None]
    q = r * r + nu[:, None]
    iq = 1 / q
    s_log_q, s_iq, s_r_iq = sample.sum(np.log(q)), sample.sum(iq), sample.sum(r * iq)
    s_log1p = s_log_q - count * log_nu  # sum log(1 + r^2 / nu)
    s_r2_iq = count - nu * s_iq  # sum r^2 / q
    half = (nu + 1) / 2
    value = (count * (special.gammaln(half) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi) - log_scale)
             - half * s_log1p)  # fmt: skip
    d_nu = (0.5 * count * (special.digamma(half) - special.digamma(nu / 2) - 1 / nu) - 0.5 * s_log1p
            + half / nu * s_r2_iq)  # fmt: skip
    grad = np.stack([(nu + 1) * inv_scale * s_r_iq, -count + (nu + 1) * s_r2_iq, nu * d_nu], 1)
    if not hessian:
        return value, grad
    iq2 = iq * iq
    s_iq2, s_r_iq2 = sample.sum(iq2), sample.sum(r * iq2)
    s_r2_iq2 = s_iq - nu * s_iq2  # sum r^2 / q^2
    h_loc = (nu + 1) * inv_scale**2 * (s_iq - 2 * nu * s_iq2)
    h_scale = -2 * nu * (nu + 1) * s_r2_iq2
    h_loc_scale = -2 * nu * (nu + 1) * inv_scale * s_r_iq2
    h_loc_nu = nu * inv_scale * (s_r_iq - (nu + 1) * s_r_iq2)
    h_scale_nu = nu * (s_r2_iq - (nu + 1) * s_r2_iq2)
    d2_nu = (0.25 * count * (special.polygamma(1, half) - special.polygamma(1, nu / 2)) + 0.5 * count / nu**2
             + s_r2_iq * (nu - 1) / (2 * nu**2) - half / nu * s_r2_iq2)  # fmt: skip
    h_nu = nu**2 * d2_nu + nu * d_nu
    hess = np.stack([
        np.stack([h_loc, h_loc_scale, h_loc_nu], 1),
        np.stack([h_loc_scale, h_scale, h_scale_nu], 1),
        np.stack([h_loc_nu, h_scale_nu, h_nu], 1),
    ], 1)  # fmt: skip
    return value, grad, hess


def _fit_student_t(z: Float[np.ndarray, "batch n"], compressed: _Sample) -> dict[str, np.ndarray]:
    exact = _Sample(z, None, z.shape[1])
    kurtosis = _moment_ratio(compressed)
    # nu from the excess kurtosis, 6 / (nu - 4), where it is finite
    nu0 = np.where(kurtosis > 0, np.clip(4 + 6 / np.maximum(kurtosis, 1e-12), 2.5, 100.0), 100.0)
    start = np.column_stack([np.zeros(len(z)), np.zeros(len(z)), np.log(nu0)])
    lower, upper = _box((-np.inf, np.inf), (-np.inf, np.inf), _LOG_NU)
    approximate = lambda theta, rows: _student_t_terms(compressed.rows(rows), theta)  # noqa: E731
    theta = _newton(approximate, start, lower, upper, exact.n)[0]
    theta, loglik = _polish(lambda t, rows: _student_t_terms(exact.rows(rows), t, hessian=False), approximate,
                            theta, lower, upper, exact.n)  # fmt: skip
    nu = np.select([theta[:, 2] <= lower[2], theta[:, 2] >= upper[2]], [NU_MIN, NU_MAX], np.exp(theta[:, 2]))
    return {"nu": nu, "loc": theta[:, 0], "scale": np.exp(theta[:, 1]), "loglik": loglik}


# --- gennorm: theta = (loc, log beta); the scale is profiled out: scale^beta = beta/n sum |x - loc|^beta


def _gennorm_terms(sample: _Sample, theta, hessian: bool = True, loc_free: bool = True):
    """Profile log-likelihood (the scale at its maximum given loc and beta) with its gradient and
    Hessian in (loc, log beta), or in log beta alone (`loc_free=False`)."""
    loc, log_beta = theta.T
    beta, count = np.exp(log_beta), sample.n
    r = sample.values - loc[:, None]
    a = np.maximum(np.abs(r), 1e-300)  # a value at loc adds |0|^beta = 0 (no log 0)
    log_a = np.log(a)
    power = np.exp(beta[:, None] * log_a)  # |x - loc|^beta
    power_log = power * log_a
    p0, p1 = sample.sum(power), sample.sum(power_log)
    log_mean = np.log(p0 / count)
    profile = log_beta - math.log(2) - (log_beta + log_mean) / beta - special.gammaln(1 / beta) - 1 / beta
    ratio = p1 / p0
    g = log_beta + log_mean + special.digamma(1 / beta) + 1
    d_beta = 1 / beta - 1 / beta**2 - ratio / beta + g / beta**2
    grad_b = beta * d_beta
    value = count * profile
    if loc_free:
        power_over_r = power / np.copysign(a, r)  # sign(r) |r|^(beta - 1)
        q0 = sample.sum(power_over_r)
        grad = count * np.stack([q0 / p0, grad_b], 1)
    else:
        grad = count * grad_b[:, None]
    if not hessian:
        return value, grad
    p2 = sample.sum(power_log * log_a)
    d_ratio = p2 / p0 - ratio**2
    d2_beta = (-1 / beta**2 + 2 / beta**3 - d_ratio / beta + ratio / beta**2
               + (1 / beta + ratio - special.polygamma(1, 1 / beta) / beta**2) / beta**2 - 2 * g / beta**3)  # fmt: skip
    h_b = beta**2 * d2_beta + beta * d_beta
    if not loc_free:
        return value, grad, count * h_b[:, None, None]
    q1 = sample.sum(power_over_r * log_a)
    q2 = sample.sum(power_over_r / np.copysign(a, r))  # |r|^(beta - 2)
    h_loc = (beta * q0**2 - (beta - 1) * q2 * p0) / p0**2
    h_loc_b = beta * (q1 * p0 - q0 * p1) / p0**2
    hess = count * np.stack([np.stack([h_loc, h_loc_b], 1), np.stack([h_loc_b, h_b], 1)], 1)
    return value, grad, hess


def _fit_gennorm(z: Float[np.ndarray, "batch n"], compressed: _Sample) -> dict[str, np.ndarray]:
    """log beta at loc = median first; then, where beta >= 1.5, Newton in (loc, log beta); below,
    golden-section search for loc and Newton in log beta (`_fit_gennorm_rough`)."""
    exact = _Sample(z, None, z.shape[1])
    batch = len(z)
    # Start beta where gennorm's excess kurtosis, Γ(5/β)Γ(1/β)/Γ(3/β)² - 3 (falling in β), meets the sample's.
    betas = np.geomspace(0.2, 20, 200)
    table = special.gamma(5 / betas) * special.gamma(1 / betas) / special.gamma(3 / betas) ** 2 - 3
    beta0 = betas[np.argmin(np.abs(table[None, :] - _moment_ratio(compressed)[:, None]), 1)]
    theta = np.column_stack([np.zeros(batch), np.log(beta0)])
    lower, upper = _box((-np.inf, np.inf), _LOG_BETA)
    theta[:, 1:] = _newton(_shape_terms(compressed, theta[:, 0]), theta[:, 1:], lower[1:], upper[1:], exact.n)[0]
    smooth = np.exp(theta[:, 1]) >= _SMOOTH_BETA
    loglik = np.empty(batch)
    if smooth.any():
        sub_compressed, sub_exact = compressed.rows(smooth), exact.rows(smooth)
        approximate = lambda t, rows: _gennorm_terms(sub_compressed.rows(rows), t)  # noqa: E731
        joint = _newton(approximate, theta[smooth], lower, upper, exact.n)[0]
        theta[smooth], loglik[smooth] = _polish(
            lambda t, rows: _gennorm_terms(sub_exact.rows(rows), t, hessian=False), approximate, joint, lower, upper,
            exact.n,
        )  # fmt: skip
    if not smooth.all():
        theta[~smooth], loglik[~smooth] = _fit_gennorm_rough(z[~smooth], compressed.rows(~smooth), theta[~smooth])
    log_beta = theta[:, 1]
    beta = np.exp(log_beta)
    # The profile log-likelihood per value is log beta - log 2 - log scale - lgamma(1/beta) - 1/beta.
    log_scale = log_beta - math.log(2) - special.gammaln(1 / beta) - 1 / beta - loglik / exact.n
    return {"beta": beta, "loc": theta[:, 0], "scale": np.exp(log_scale), "loglik": loglik}


def _shape_terms(sample: _Sample, loc, hessian: bool = True):
    """gennorm's profile terms in log beta alone, loc fixed (per row)."""

    def terms(log_beta, rows):
        theta = np.column_stack([loc[rows], log_beta[:, 0]])
        return _gennorm_terms(sample.rows(rows), theta, hessian=hessian, loc_free=False)

    return terms


def _fit_gennorm_rough(z, compressed: _Sample, theta) -> tuple[np.ndarray, np.ndarray]:
    """beta < 1.5: loc by golden-section search, on the compressed sample and then on the values near loc
    exact; log beta by Newton there; then log beta polished on the exact sample."""
    exact = _Sample(z, None, z.shape[1])
    n = z.shape[1]
    beta = np.exp(theta[:, 1])
    loc = _golden_loc(compressed, beta, np.full(len(z), -0.25), np.full(len(z), 0.25), tol=1e-5)
    edge = np.abs(np.abs(loc) - 0.25) < 1e-3  # the maximum may lie beyond: search the inner 98% of values
    if edge.any():
        low, high = z[edge, n // 100], z[edge, n - 1 - n // 100]
        loc[edge] = _golden_loc(compressed.rows(edge), beta[edge], low, high, tol=1e-5)
    near, reach = _exact_near(z, compressed, loc)
    width = np.minimum(0.01, 0.5 * np.where(reach > 0, reach, 0.02))  # loc in an exact tail: already exact around it
    loc = _golden_loc(near, beta, loc - width, loc + width, tol=1e-7)
    lower, upper = _box(_LOG_BETA)
    log_beta = _newton(_shape_terms(near, loc), theta[:, 1:], lower, upper, n)[0]
    log_beta, loglik = _polish(_shape_terms(exact, loc, hessian=False), _shape_terms(near, loc), log_beta, lower,
                               upper, n)  # fmt: skip
    return np.column_stack([loc, log_beta[:, 0]]), loglik


def _golden_loc(sample: _Sample, beta: Float[np.ndarray, " batch"], low, high, tol: float) -> np.ndarray:
    """argmin over loc in [low, high] of sum |x - loc|^beta, to within tol (golden-section search, rows at once)."""
    ratio = (math.sqrt(5) - 1) / 2

    def objective(loc):
        return sample.sum(np.abs(sample.values - loc[:, None]) ** beta[:, None])

    c, d = high - ratio * (high - low), low + ratio * (high - low)
    fc, fd = objective(c), objective(d)
    for _ in range(max(0, math.ceil(math.log(tol / max(float((high - low).max()), tol)) / math.log(ratio)))):
        left = fc < fd  # the minimum lies in [low, d]
        high, low = np.where(left, d, high), np.where(left, low, c)
        new = np.where(left, high - ratio * (high - low), low + ratio * (high - low))
        f_new = objective(new)
        c, d = np.where(left, new, d), np.where(left, c, new)
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
    return np.where(fc < fd, c, d)


_NEAR_GROUPS = 32  # compressed groups each side of loc replaced by their exact values


def _exact_near(z, compressed: _Sample, loc) -> tuple[_Sample, np.ndarray]:
    """The compressed sample with the groups nearest loc exact again, and how far from loc they reach."""
    if compressed.weights is None:
        return compressed, np.full(len(z), np.inf)
    batch, n = z.shape
    tail = math.ceil(_TAIL_FRACTION * n)
    n_groups = (n - 2 * tail) // _GROUP
    span = min(2 * _NEAR_GROUPS, n_groups)
    rows = np.arange(batch)[:, None]
    position = np.array([np.searchsorted(row, at) for row, at in zip(z, loc, strict=True)])
    first = np.clip((position - tail) // _GROUP - span // 2, 0, n_groups - span)
    groups = first[:, None] + np.arange(span)
    weights = compressed.weights.copy()
    weights[rows, tail + groups] = 0.0  # each group is two points: mean - std, then mean + std
    weights[rows, tail + n_groups + groups] = 0.0
    near = z[rows, tail + first[:, None] * _GROUP + np.arange(span * _GROUP)]
    reach = np.minimum(loc - near[:, 0], near[:, -1] - loc)
    values = np.concatenate([near, compressed.values], 1)
    return _Sample(values, np.concatenate([np.ones_like(near), weights], 1), n), reach


# --- Student-t on its own, power-law tails


def fit_student_t(sample: ArrayLike) -> tuple[float, float, float]:
    """Maximum-likelihood (nu, loc, scale) of a Student-t, nu in [NU_MIN, NU_MAX] (as in `fit_distributions`)."""
    x = np.sort(_flat(sample).astype(np.float64))[None]
    centre, spread = _centre_and_spread(x)
    z = (x - centre[:, None]) / spread[:, None]
    fit = _fit_student_t(z, _compress(z))
    return float(fit["nu"][0]), float(centre[0] + spread[0] * fit["loc"][0]), float(spread[0] * fit["scale"][0])


def fit_powerlaw_tail(values: ArrayLike, *, candidates: Candidates = "all", min_tail: int = 2) -> PowerLawFit:
    """Clauset-Shalizi-Newman power-law fit to the upper tail of nonnegative values (zeros are ignored).

    `candidates`: which x_min are tried. "all": every distinct value but the largest (Clauset et al.,
    the `powerlaw` package's `Fit(data, discrete=False)`, WeightWatcher). An int k: the smallest value
    of the tails of k tail sizes spaced evenly in log between `min_tail` and all positive values, for
    samples too large to try them all. `min_tail`: the smallest tail tried. Returns NaNs (n_tail 0)
    when fewer than `min_tail` values are positive or no candidate leaves a tail of two distinct values.
    Definitions: the module docstring.
    """
    a = _flat(values).astype(np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("fit_powerlaw_tail needs finite nonnegative values (pass |x|, without NaN or inf)")
    log_spaced = isinstance(candidates, (int, np.integer)) and not isinstance(candidates, bool) and candidates >= 1
    if not (log_spaced or candidates == "all"):
        raise ValueError(f'candidates must be "all" or a number of log-spaced tail sizes >= 1, got {candidates!r}')
    if isinstance(min_tail, bool) or not isinstance(min_tail, (int, np.integer)) or min_tail < 2:
        raise ValueError(f"min_tail must be an int >= 2 (a tail of one value has no exponent), got {min_tail!r}")
    return _powerlaw_sorted(np.sort(a), len(a), candidates, min_tail)[0]


_POWERLAW_GRID = 128  # distinct values of each candidate tail that bound its KS distance
_POWERLAW_BOUND_CELLS = 1 << 21  # candidates x grid points bounded at a time (memory)


def _powerlaw_sorted(a: np.ndarray, n_all: int, candidates: Candidates, min_tail: int):
    """`fit_powerlaw_tail` of sorted nonnegative values (n_all of them before any were dropped), and the tail."""
    a = a[np.searchsorted(a, 0.0, side="right") :]
    n = len(a)
    if n < min_tail:
        return PowerLawFit.nan(), a[:0]
    logs = np.log(a)
    # The first occurrence of each distinct value: the candidate x_min, and the points where the
    # empirical cdf is compared (as the powerlaw package does with ties).
    first = np.flatnonzero(np.concatenate([[True], a[1:] != a[:-1]]))
    ranks = _powerlaw_candidates(a, first, candidates, min_tail)
    starts = first[ranks]
    m = n - starts
    # sum over the tail of ln(x / x_min) from suffix sums of ln x: WeightWatcher's arithmetic, bit for bit
    suffix_log = np.cumsum(np.add.reduceat(logs, starts)[::-1])[::-1]
    sum_log_ratio = suffix_log - m * logs[starts]
    valid = sum_log_ratio > 0  # false only for a tail of equal values (or one rounding below them)
    ranks, starts, m = ranks[valid], starts[valid], m[valid]
    if not len(starts):
        return PowerLawFit.nan(), a[:0]
    alpha = 1.0 + m / sum_log_ratio[valid]
    lower, upper = _powerlaw_ks_bounds(logs, first, ranks, m, alpha)
    # Exact distances in order of their lower bounds, until no remaining one can be the smallest;
    # among equal distances the first candidate wins, as an argmin over all of them would.
    best_ks, best = math.inf, -1
    limit = upper.min()
    for i in np.argsort(lower, kind="stable"):
        if lower[i] > min(best_ks, limit) + 1e-12:
            break
        points = first[ranks[i] :]
        fitted = 1.0 - np.exp((1.0 - alpha[i]) * (logs[points] - logs[starts[i]]))
        ks = float(np.abs(fitted - (points - starts[i]) / m[i]).max())
        if ks < best_ks or (ks == best_ks and i < best):
            best_ks, best = ks, i
    start, size, alpha_best = starts[best], int(m[best]), float(alpha[best])
    fit = PowerLawFit(alpha_best, (alpha_best - 1) / math.sqrt(size), float(a[start]), size, size / n_all, best_ks)
    return fit, a[start:]


def _powerlaw_candidates(a: np.ndarray, first: np.ndarray, candidates: Candidates, min_tail: int) -> np.ndarray:
    """Ranks (indices into `first`) of the distinct values tried as x_min; a tail is every value >= x_min."""
    n = len(a)
    if candidates == "all":
        ranks = np.arange(len(first) - 1)  # all but the largest value
        return ranks[n - first[ranks] >= min_tail]
    sizes = np.unique(np.round(np.geomspace(min_tail, n, candidates)).astype(np.int64))
    ranks = np.unique(np.searchsorted(first, np.searchsorted(a, a[n - sizes], side="left")))
    return ranks[ranks < len(first) - 1]  # a tail of one value has no exponent


def _powerlaw_ks_bounds(logs, first, ranks, m, alpha) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on each candidate's KS distance, from _POWERLAW_GRID + 1 distinct values of its tail.

    The distance is the largest |F(x) - j/m| over the tail's distinct values x, j the tail position of x's
    first occurrence. Between two grid values at positions g < h, F lies in [F(x_g), F(x_h)] and j in
    [g + 1, h - 1], which bounds it.
    """
    lower, upper = np.empty(len(ranks)), np.empty(len(ranks))
    step = max(1, _POWERLAW_BOUND_CELLS // (_POWERLAW_GRID + 1))
    fractions = np.linspace(0, 1, _POWERLAW_GRID + 1)
    for c in range(0, len(ranks), step):
        r, mm, al = ranks[c : c + step, None], m[c : c + step, None], alpha[c : c + step, None]
        q = r + np.round(fractions * (len(first) - 1 - r)).astype(np.int64)
        start, points = first[r], first[q]
        cdf = 1.0 - np.exp((1.0 - al) * (logs[points] - logs[start]))
        g = points - start
        low = np.abs(cdf - g / mm).max(1)
        cell = np.maximum(cdf[:, 1:] - (g[:, :-1] + 1) / mm, (g[:, 1:] - 1) / mm - cdf[:, :-1])
        cell = np.where(q[:, 1:] - q[:, :-1] > 1, cell, -np.inf)  # no distinct value between: nothing to bound
        lower[c : c + step], upper[c : c + step] = low, np.maximum(low, cell.max(1))
    return lower, upper
