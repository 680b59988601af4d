"""Shape of each weight matrix's distribution: moments, a fixed-bin histogram, parametric fits, QQ data.

Which tensors: every weight matrix (`W_*`) of `component_weights(model)` with at least
`min_entries` (1,000) entries: W_QKV and its parts W_Q, W_K, W_V, W_O, W_in, W_out per layer, and
W_E, W_U. Biases and layer-norm parameters are left out whatever their size: they are vectors
(often only a few hundred numbers), layer-norm weights sit around 1 rather than 0, and their size
and spread are already in `weight_norms`. Weights are read as the model holds them (raw unless it
was loaded processed).

Scalars per (component, layer), head null. Over **all entries** of the tensor:

- `n_entries`; `mean`; `std` (population, ddof 0); `skew` (scipy.stats.skew); `excess_kurtosis`
  (scipy.stats.kurtosis, Fisher: 0 for a Gaussian); `max_abs` = max |w|.
- `histogram_underflow`, `histogram_overflow`: entries below the first / above the last edge.

Over the **fitted sample** (all entries, or `max_samples` (50,000) drawn uniformly without
replacement with a fixed seed: the same positions of a tensor at every checkpoint), from
`pythia_dynamics.fits.fit_distributions` (definitions in that module's docstring):

- `n_fit_samples`; `subsampled` (1.0 when the fit used a subsample, else 0.0).
- `<family>_<parameter>` for `gaussian_{loc,scale}`, `logistic_{loc,scale}`,
  `student_t_{nu,loc,scale}` (nu capped at 1000: no tail weight beyond Gaussian detectable),
  `gennorm_{beta,loc,scale}` (beta 2 Gaussian, 1 Laplace); scale and loc in weight units.
- `<family>_loglik_per_sample` (natural log of the density in weight units, per value),
  `<family>_aic`, `<family>_bic`, `<family>_ks` (Kolmogorov-Smirnov distance to the fitted cdf).
- `best_family_index`: the family with the smallest AIC, coded 0 gaussian, 1 logistic,
  2 student_t, 3 gennorm (`pythia_dynamics.fits.FAMILIES`); `best_family_bic_index` the same by BIC.
- `powerlaw_alpha` (density ∝ |w|^-alpha above x_min), `powerlaw_alpha_stderr`, `powerlaw_xmin`,
  `powerlaw_n_tail`, `powerlaw_tail_fraction` (of the fitted sample), `powerlaw_ks`: Clauset et al.'s
  fit of |w| by `pythia_dynamics.fits.fit_powerlaw_tail` (the fitter `spectra` uses too), with x_min
  chosen among 100 log-spaced tail sizes of at least 100 values (`candidates=POWERLAW_TAIL_SIZES`,
  `min_tail=POWERLAW_MIN_TAIL`) rather than among all 50,000 values: ~1.4 ms a tensor instead of
  ~0.5 s, alpha within a standard error of the all-candidates fit.

Arrays per (component, layer):

- `histogram`: counts of all entries in the bins of `histogram_edges` ([n_bins]; numpy.histogram's
  convention); `histogram_edges` ([n_bins + 1]): `pythia_dynamics.fits.WEIGHT_BINS`, the same for
  every tensor, checkpoint and model (symmetric-log: 240 bins on ±10, linear within ~0.002).
- `qq_gaussian`, `qq_powerlaw`: [103, 3] arrays of (probability, model quantile, sample quantile)
  on the fixed `QQ_PROBABILITIES`; against the fitted Gaussian, and for |w| in the fitted tail
  against the fitted power law.
- `best_family`: the best family by AIC as text, e.g. `["student_t"]`.

A tensor with a non-finite entry or no spread gets moments and histogram only (and a logged warning).

How it is computed (the numbers are as defined above): W_QKV's moments and histogram are merged
from W_Q's, W_K's and W_V's, whose entries are exactly its entries (equal to a pass over W_QKV up to
float64 rounding); the matrices are summarised on torch's CPU threads, and all the fits of a
checkpoint run as one batch (`pythia_dynamics.fits.fit_many`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.fits import DEFAULT_MAX_SAMPLES, WEIGHT_BINS, SymlogBins
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.summaries import DistributionSummary, write_summaries
from pythia_dynamics.weights import component_weights

__all__ = ["WeightDistributionConfig", "weight_distributions"]


@dataclass(frozen=True)
class WeightDistributionConfig:
    min_entries: int = 1_000  # fewer values say little about a distribution's shape
    max_samples: int = DEFAULT_MAX_SAMPLES  # fits run on at most this many entries per tensor
    seed: int = 0
    bins: SymlogBins = WEIGHT_BINS


@register("weight_distributions", needs="weights", version=2)  # 2: power-law tail KS as the powerlaw package defines it
@torch.no_grad()
def weight_distributions(model, *, config: WeightDistributionConfig | None = None) -> Records:
    """Moments, fixed-bin histogram, Gaussian/logistic/Student-t/gennorm/power-law fits and QQ data per weight matrix."""
    config = config or WeightDistributionConfig()
    weights = {
        key: tensor for key, tensor in component_weights(model).items()
        if key[0].startswith("W_") and tensor.numel() >= config.min_entries
    }  # fmt: skip
    options = {"max_samples": config.max_samples, "seed": config.seed}

    def summarise(key):
        return DistributionSummary.of(weights[key], config.bins, **options)

    own = [key for key in weights if key[0] != "W_QKV"]
    with ThreadPoolExecutor(torch.get_num_threads()) as pool:  # numpy releases the GIL in its loops
        summaries = dict(zip(own, pool.map(summarise, own), strict=True))
    for (component, layer), tensor in weights.items():
        if component == "W_QKV":  # its entries are exactly W_Q's, W_K's and W_V's: merge theirs
            parts = [summaries[(name, layer)] for name in ("W_Q", "W_K", "W_V") if (name, layer) in summaries]
            summaries[(component, layer)] = DistributionSummary.of(tensor, config.bins, **options, parts=parts)
    records = RecordBuilder()
    write_summaries(records, [(summaries[key], *key, None) for key in weights])
    return records.build()
