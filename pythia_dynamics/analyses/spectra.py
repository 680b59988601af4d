"""Singular-value spectra of the weight matrices: the power-law tail, outliers beyond the random bulk, rank.

Which matrices (components as TransformerLens names them, raw unless the model was loaded processed):

- every 2-d matrix of `component_weights`: `W_QKV` (fused, [d_model, 3·n_heads·d_head], in families that
  fuse Q, K and V), `W_gate` (gated MLPs), `W_in`, `W_out`, `W_E`, `W_U` (`head` null);
- `W_O` whole (`head` null): the per-head output matrices stacked into the attention output matrix
  [n_heads·d_head, d_model] (GPT-NeoX's `attention.dense`, the study's "attention dense");
- per head (`head` set): `W_Q[h]`, `W_K[h]`, `W_V[h]` ([d_model, d_head]) and `W_O[h]` ([d_head, d_model]).

Every matrix is first oriented N × M with N ≥ M (transposed if needed; nothing below depends on the
orientation). Definitions, with σ_1 ≥ … ≥ σ_M the singular values:

- array `singular_values`: all M of them, descending, in float64: the square roots of the eigenvalues
  of the M × M Gram matrix WᵀW, formed in float64 (the products of float32 entries are exact there)
  and diagonalised by a symmetric eigensolver (`scipy.linalg.blas.dsyrk` and `scipy.linalg.eigvalsh`
  for weights on the CPU, torch's matmul and `torch.linalg.eigvalsh` on other devices), several times
  cheaper than an SVD for a tall matrix (W_E, W_U: 50304 × 512). Tolerance: every σ_i is within
  10⁻¹³·σ_1²/σ_i of its exact value (a relative 10⁻¹³·(σ_1/σ_i)²; measured up to 2·10⁻¹⁴·σ_1²/σ_i
  on 50304 × 512 matrices; an SVD's error is ~10⁻¹⁵·σ_1). A matrix with σ_1/σ_M > `GRAM_MAX_CONDITION`
  = 10⁴ (rank-deficient ones and the zero matrix included) gets an SVD in float64 instead (LAPACK's
  gesdd: `scipy.linalg.svdvals`, `torch.linalg.svdvals`), so no stored σ_i is off by more than
  10⁻⁹·σ_1 (a relative 10⁻⁵ at worst), less than the ~6·10⁻⁸·σ_1 by which rounding the weights to
  float32 can move a singular value.
- `spectral_norm` = σ_1; `stable_rank` = ‖W‖_F² / ‖W‖_2² = Σ σ_i² / σ_1² (1 for a rank-one matrix,
  M for an orthogonal one; NaN for the zero matrix).
- Power law (WeightWatcher's fit, `weightwatcher` 0.7 `WWFit`): the empirical spectral density of the
  eigenvalues λ_i = σ_i² / N of the correlation matrix X = WᵀW / N (N the larger dimension). Eigenvalues
  below 10⁻¹² λ_max (numerically zero: rank deficiency) are dropped. The fitter is
  `pythia_dynamics.fits.fit_powerlaw_tail` with `candidates="all"` and min_tail 2: every eigenvalue but
  the largest is tried as x_min (a spectrum has at most a few thousand, so all are tried, as
  WeightWatcher and the `powerlaw` package do). The continuous power law p(λ) ∝ λ^-α on λ ≥ x_min is
  fitted by maximum likelihood, α = 1 + n / Σ_{λ_i ≥ x_min} ln(λ_i / x_min) (n the tail size), and
  scored by the Kolmogorov–Smirnov distance D = max_tail |F_emp − F_fit| with F_fit(λ) = 1 − (λ/x_min)^(1-α)
  and F_emp = 0, 1/n, …, (n−1)/n at the sorted tail (equal eigenvalues, which real spectra do not have,
  would be one candidate and one point). The x_min with the smallest D wins (Clauset, Shalizi & Newman
  2009). Stats: `powerlaw_alpha` (α), `powerlaw_xmin` (x_min on the λ = σ²/N scale; WeightWatcher
  reports N times this, as it does not divide by N; α and D do not depend on the scale), `powerlaw_ks`
  (D), `powerlaw_n_tail` (n). All NaN when the matrix has fewer than `MIN_EIGENVALUES_FOR_FIT` = 20
  nonzero eigenvalues (WeightWatcher switches to another estimator there; a per-head matrix with
  d_head < 20 gets NaN). σ_i ∝ i^-k gives α = 1 + 1/(2k); a random (Marchenko–Pastur) spectrum has no
  power-law tail, and the fit then picks a few top eigenvalues and reports a large α with a small
  `powerlaw_n_tail` (docs/spectra.md).
- Marchenko–Pastur bulk: an N × M matrix of i.i.d. entries of variance s² has, as N, M grow, its
  singular values inside [s(√N − √M), s(√N + √M)] whatever the entries' distribution (finite variance).
  s is estimated from the spectrum's median, not from mean(w²), so that a few large outliers (the thing
  being counted) do not inflate it (Gavish & Donoho 2014): s² = median(σ_i²) / (N · μ_q), where μ_q is
  the median of the Marchenko–Pastur law of ratio q = M / N with unit variance. Stats: `mp_noise_std`
  (s), `mp_edge` (the bulk edge s(√N + √M)), `mp_threshold` (the edge plus a finite-size margin:
  s·sqrt(μ_NM + 4 σ_NM) with Johnstone's (2001) centring μ_NM = (√(N−1) + √M)² and Tracy–Widom scale
  σ_NM = (√(N−1) + √M)(1/√(N−1) + 1/√M)^(1/3); TW1's 99% quantile is 2.02, so a Gaussian matrix's
  largest bulk value almost never passes 4 units, and the margin also absorbs the error of the median
  estimate of s; never below 10⁻⁶ σ_1, so that the rounding noise of a numerically low-rank matrix
  is not counted), and `n_outlier_singular_values` = #{i : σ_i > mp_threshold} (the rank of a matrix
  that is exactly low-rank).

Notes: a matrix of i.i.d. heavy-tailed entries (say Student-t with 5 degrees of freedom) can show a few
"outliers" that are single large entries rather than low-rank structure; the count says the spectrum
leaves the random bulk, not why. The MP law assumes i.i.d. entries, which a freshly initialised
GPT-NeoX matrix satisfies (normal, std 0.02 in Hugging Face's initialiser).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import einops
import numpy as np
import scipy.integrate
import scipy.linalg
import scipy.linalg.blas
import scipy.optimize
import torch
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.fits import PowerLawFit, fit_powerlaw_tail
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.weights import component_weights

__all__ = [
    "GRAM_MAX_CONDITION",
    "HEAD_MATRICES",
    "MIN_EIGENVALUES_FOR_FIT",
    "TRACY_WIDOM_MARGIN",
    "WHOLE_MATRICES",
    "MarchenkoPasturBulk",
    "gram",
    "marchenko_pastur_bulk",
    "marchenko_pastur_median",
    "singular_values",
    "spectra",
    "spectral_matrices",
    "spectrum_stats",
]

WHOLE_MATRICES = ("W_QKV", "W_gate", "W_in", "W_out", "W_E", "W_U")
HEAD_MATRICES = ("W_Q", "W_K", "W_V", "W_O")  # stacked [head, ...]; W_O also whole
MIN_EIGENVALUES_FOR_FIT = 20
TRACY_WIDOM_MARGIN = 4.0  # Tracy-Widom scale units above Johnstone's centring
_ZERO_EIGENVALUE = 1e-12  # relative to λ_max: eigenvalues below are rank deficiency, not spectrum
GRAM_MAX_CONDITION = 1e4  # σ_1/σ_M beyond which the Gram route's error bound is too loose: an SVD instead
_WHOLE_GRAM_ELEMENTS = 1 << 23  # a matrix up to this size is converted to float64 whole for its Gram matrix
_GRAM_BLOCK_ELEMENTS = 1 << 20  # a larger one a block of rows at a time (8 MiB of float64)
_HEAD_BATCH_ELEMENTS = 1 << 23  # per-head matrices are stacked and decomposed this many entries at a time


@dataclass(frozen=True)
class MarchenkoPasturBulk:
    noise_std: float  # s, the entry standard deviation of the random matrix the bulk is compared with
    edge: float  # s(√N + √M)
    threshold: float  # the edge plus the finite-size margin; σ above it count as outliers
    n_outliers: int


def singular_values(matrix: Float[Tensor, "*batch rows cols"]) -> Float[Tensor, "*batch k"]:
    """All min(rows, cols) singular values of each matrix, descending, in float64 (see the module docstring)."""
    w = matrix.detach()
    tall = w if w.shape[-2] >= w.shape[-1] else w.mT
    if tall.dim() == 2 and tall.device.type == "cpu":
        return torch.from_numpy(_singular_values_scipy(_numpy(tall)))
    sigma = _singular_values_torch(tall.reshape(-1, *tall.shape[-2:]))
    return sigma.reshape(*tall.shape[:-2], tall.shape[-1])


def gram(tall: Float[Tensor, "n m"]) -> Float[Tensor, "m m"]:
    """WᵀW of one matrix in float64, where products of float32 entries are exact (on the CPU: lower triangle)."""
    if tall.device.type == "cpu":
        return torch.from_numpy(_gram_scipy(_numpy(tall.detach())))
    return _gram_torch(tall.detach()[None])[0]


def _ill_conditioned(largest, smallest):
    # The Gram route's error grows as (σ_1/σ_i)²: such matrices (and the zero matrix) get an SVD instead.
    return ~(smallest >= largest / GRAM_MAX_CONDITION**2)


def _singular_values_torch(tall: Float[Tensor, "batch n m"]) -> Float[Tensor, "batch m"]:
    eigenvalues = torch.linalg.eigvalsh(_gram_torch(tall)).flip(-1)
    sigma = eigenvalues.clamp_min(0).sqrt()
    ill = _ill_conditioned(eigenvalues[:, 0], eigenvalues[:, -1])
    if ill.any():
        sigma[ill] = torch.linalg.svdvals(tall[ill].double())
    return sigma


def _gram_torch(tall: Float[Tensor, "batch n m"]) -> Float[Tensor, "batch m m"]:
    if tall.numel() <= _WHOLE_GRAM_ELEMENTS or len(tall) > 1:
        w = tall.double()
        return w.mT @ w
    n, m = tall.shape[1:]
    step = max(1, _GRAM_BLOCK_ELEMENTS // m)
    result = torch.zeros(m, m, dtype=torch.float64, device=tall.device)
    for start in range(0, n, step):
        block = tall[0, start : start + step].double()
        result.addmm_(block.mT, block)
    return result[None]


# One matrix on the CPU: scipy's BLAS syrk (a symmetric product, half a matmul's work) and LAPACK, and no
# torch kernel in between: alternating torch's and OpenBLAS's thread pools makes each wait for the other.
def _singular_values_scipy(tall: np.ndarray) -> np.ndarray:
    """[n, m] with n ≥ m -> its m singular values, descending, float64."""
    eigenvalues = scipy.linalg.eigvalsh(_gram_scipy(tall), lower=True, check_finite=False)[::-1]
    if _ill_conditioned(eigenvalues[0], eigenvalues[-1]):
        return scipy.linalg.svdvals(tall.astype(np.float64), check_finite=False)
    return np.sqrt(np.clip(eigenvalues, 0, None))


def _gram_scipy(tall: np.ndarray) -> np.ndarray:
    n, m = tall.shape
    step = n if tall.size <= _WHOLE_GRAM_ELEMENTS else max(1, _GRAM_BLOCK_ELEMENTS // m)
    buffer = np.empty(min(step, n) * m)
    result = np.zeros((m, m), order="F")
    for start in range(0, n, step):
        block = _float64_copy(tall[start : start + step], buffer)
        a, trans = (block, 1) if block.flags.f_contiguous else (block.T, 0)  # dsyrk reads Fortran order
        result = scipy.linalg.blas.dsyrk(1.0, a, beta=1.0, c=result, trans=trans, lower=1, overwrite_c=1)
    return result


def _float64_copy(block: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    # Copied in the source's memory order: W_U's tall orientation is a transposed view of [d_model, d_vocab].
    if block.strides[0] < block.strides[1]:
        out = buffer[: block.size].reshape(block.shape[::-1])
        np.copyto(out, block.T)
        return out.T
    out = buffer[: block.size].reshape(block.shape)
    np.copyto(out, block)
    return out


def _numpy(t: Tensor) -> np.ndarray:
    # bfloat16 has no numpy dtype; float32 holds it exactly.
    return (t if t.dtype in (torch.float16, torch.float32, torch.float64) else t.float()).numpy()


def _powerlaw_of_eigenvalues(eigenvalues: np.ndarray) -> PowerLawFit:
    """WeightWatcher's power-law fit of the nonzero `eigenvalues` (NaN with fewer than MIN_EIGENVALUES_FOR_FIT)."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    if x.size and x[-1] > 0:
        x = x[x > _ZERO_EIGENVALUE * x[-1]]
    if x.size < MIN_EIGENVALUES_FOR_FIT:
        return PowerLawFit.nan()
    return fit_powerlaw_tail(x, candidates="all", min_tail=2)


@lru_cache(maxsize=256)
def marchenko_pastur_median(q: float) -> float:
    """Median of the Marchenko–Pastur law with ratio q = M/N ∈ (0, 1] and unit variance."""
    if not 0 < q <= 1:
        raise ValueError(f"the Marchenko–Pastur ratio q = M/N must be in (0, 1], got {q}")
    lower, upper = (1 - math.sqrt(q)) ** 2, (1 + math.sqrt(q)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((upper - x) * (x - lower), 0.0)) / (2 * math.pi * q * x)

    def cdf(t: float) -> float:
        # At q = 1 the density has an integrable 1/√x singularity at 0; quad copes with it.
        return scipy.integrate.quad(density, lower, t, limit=200)[0]

    return float(scipy.optimize.brentq(lambda t: cdf(t) - 0.5, lower, upper, xtol=1e-13))


def marchenko_pastur_bulk(sigma: np.ndarray, n: int, m: int, margin: float = TRACY_WIDOM_MARGIN) -> MarchenkoPasturBulk:
    """Compare singular values `sigma` of an n × m matrix (n ≥ m) with the random bulk of the same shape."""
    if n < m:
        raise ValueError(f"orient the matrix with n ≥ m (transpose it), got n={n}, m={m}")
    noise_std = math.sqrt(float(np.median(sigma**2)) / (n * marchenko_pastur_median(m / n)))
    edge = noise_std * (math.sqrt(n) + math.sqrt(m))
    root = math.sqrt(max(n - 1, 1)) + math.sqrt(m)
    centre, scale = root**2, root * (1 / math.sqrt(max(n - 1, 1)) + 1 / math.sqrt(m)) ** (1 / 3)
    # A numerically low-rank matrix has a bulk of rounding noise: never count that noise as outliers.
    floor = math.sqrt(_ZERO_EIGENVALUE) * float(np.max(sigma, initial=0.0))
    threshold = max(noise_std * math.sqrt(centre + margin * scale), floor)
    return MarchenkoPasturBulk(noise_std, edge, threshold, int(np.sum(sigma > threshold)))


def spectrum_stats(matrix: Float[Tensor, "rows cols"]) -> tuple[np.ndarray, dict[str, float]]:
    """(singular values descending, {stat: value}) for one matrix, as the module docstring defines them."""
    sigma = singular_values(matrix).cpu().numpy()
    return sigma, _stats(sigma, max(matrix.shape), min(matrix.shape))


def _stats(sigma: np.ndarray, n: int, m: int) -> dict[str, float]:
    top = float(sigma[0]) if sigma.size else 0.0
    fit = _powerlaw_of_eigenvalues(sigma**2 / n)
    bulk = marchenko_pastur_bulk(sigma, n, m)
    return {
        "spectral_norm": top,
        "stable_rank": float(np.sum(sigma**2) / top**2) if top > 0 else math.nan,
        "powerlaw_alpha": fit.alpha,
        "powerlaw_xmin": fit.x_min,
        "powerlaw_ks": fit.ks,
        "powerlaw_n_tail": fit.n_tail,
        "mp_noise_std": bulk.noise_std,
        "mp_edge": bulk.edge,
        "mp_threshold": bulk.threshold,
        "n_outlier_singular_values": bulk.n_outliers,
    }


def _all_singular_values(matrices: dict[tuple, Tensor]) -> dict[tuple, np.ndarray]:
    """Singular values of every matrix: the many small per-head ones in batches of one shape, first."""
    heads, sigma = defaultdict(list), {}
    for key, matrix in matrices.items():
        if key[2] is not None:
            heads[tuple(matrix.shape)].append(key)
    for same_shape in heads.values():
        # In batches of bounded size: all of 410m's (24 layers x 16 heads x Q, K, V) at once would take ~0.9 GB.
        step = max(1, _HEAD_BATCH_ELEMENTS // math.prod(matrices[same_shape[0]].shape))
        for start in range(0, len(same_shape), step):
            keys = same_shape[start : start + step]
            batch = singular_values(torch.stack([matrices[key] for key in keys])).cpu().numpy()
            sigma.update(zip(keys, batch))
    for key, matrix in matrices.items():
        if key[2] is None:
            sigma[key] = singular_values(matrix).cpu().numpy()
    return sigma


@torch.no_grad()
def spectral_matrices(model) -> dict[tuple[str, int | None, int | None], Tensor]:
    """{(component, layer, head): matrix} for every matrix the module docstring lists."""
    matrices = {}
    for (component, layer), tensor in component_weights(model).items():
        if component in WHOLE_MATRICES:
            matrices[(component, layer, None)] = tensor
        elif component in HEAD_MATRICES:  # W_Q, W_K, W_V: [head, d_model, d_head]; W_O: [head, d_head, d_model]
            if component == "W_O":
                matrices[(component, layer, None)] = einops.rearrange(
                    tensor, "head d_head d_model -> (head d_head) d_model"
                )
            for head in range(tensor.shape[0]):
                matrices[(component, layer, head)] = tensor[head]
    return matrices


@register("spectra", needs="weights")
@torch.no_grad()
def spectra(model) -> Records:
    """Singular values, power-law tail exponent, outliers beyond the Marchenko–Pastur edge, stable rank."""
    records = RecordBuilder()
    matrices = spectral_matrices(model)
    sigmas = _all_singular_values(matrices)
    for (component, layer, head), matrix in matrices.items():
        sigma = sigmas[(component, layer, head)]
        stats = _stats(sigma, max(matrix.shape), min(matrix.shape))
        records.array(component, "singular_values", sigma, layer=layer, head=head)
        for stat, value in stats.items():
            records.scalar(component, stat, value, layer=layer, head=head)
    return records.build()
