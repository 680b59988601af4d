"""One distribution, summarised the same way wherever it comes from: weights, activations, gradients.

`DistributionSummary` accumulates moments, a fixed-bin histogram and a seeded sample, chunk by chunk
(the same numbers as one pass over everything), then writes the records `weight_distributions`
documents: `n_entries, mean, std, skew, excess_kurtosis, max_abs, histogram_underflow,
histogram_overflow`, the fit scalars of `pythia_dynamics.fits.FitReport.scalars`, and the arrays
`histogram`, `histogram_edges`, `qq_gaussian`, `qq_powerlaw`, `best_family`. `write_summaries`
writes several at once, fitting their samples together (`pythia_dynamics.fits.fit_many`): the same
records as writing each in turn, faster.

Fixed bins per kind of quantity (symmetric-log, see `pythia_dynamics.fits.SymlogBins`), the same for
every checkpoint and model so histograms animate: weights `WEIGHT_BINS` (±10, linear within 0.002),
activations `ACTIVATION_BINS` (±10^4, linear within 0.01: residual outliers of real Pythia models
reach the thousands), gradients `GRADIENT_BINS` (±1, linear within 1e-7).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from pythia_dynamics.fits import (
    DEFAULT_MAX_SAMPLES,
    WEIGHT_BINS,
    FixedBinHistogram,
    Reservoir,
    RunningMoments,
    SymlogBins,
    check_fit_sample,
    fit_many,
    subsample,
)
from pythia_dynamics.records import RecordBuilder

__all__ = ["ACTIVATION_BINS", "GRADIENT_BINS", "WEIGHT_BINS", "DistributionSummary", "write_summaries"]

log = logging.getLogger(__name__)

ACTIVATION_BINS = SymlogBins(linear_width=0.01, max_abs=1e4, n_bins=240)
GRADIENT_BINS = SymlogBins(linear_width=1e-7, max_abs=1.0, n_bins=240)


class DistributionSummary:
    """Streamed with `update` (a seeded reservoir keeps the fit sample), or built whole with `of`."""

    def __init__(self, bins: SymlogBins, *, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0, fit: bool = True):
        self.edges = bins.edges()
        self.moments = RunningMoments()
        self.histogram = FixedBinHistogram(self.edges)
        self.seed = seed
        self.reservoir = Reservoir(max_samples, seed) if fit else None
        self._whole_sample: np.ndarray | None = None

    @classmethod
    def of(
        cls, values, bins: SymlogBins, *, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = 0,
        parts: Sequence[DistributionSummary] = (),
    ) -> DistributionSummary:  # fmt: skip
        """A tensor held whole: fitted on a fixed-seed `subsample` (the same positions at every checkpoint),
        cheaper than a reservoir over tens of millions of entries. `parts`: summaries of tensors whose
        entries together are exactly those of `values` (W_Q, W_K, W_V of W_QKV); their moments and
        histograms are merged rather than computed again (equal up to float64 rounding)."""
        summary = cls(bins, max_samples=max_samples, seed=seed, fit=False)
        if parts and sum(part.moments.count for part in parts) == math.prod(np.shape(values)):
            for part in parts:
                summary.moments.merge(part.moments)
                summary.histogram.merge(part.histogram)
        else:
            summary.moments.update(values)
            summary.histogram.update(values)
        summary._whole_sample = subsample(values, max_samples, seed, dtype=None)  # float32 sorts faster
        return summary

    def update(self, values) -> DistributionSummary:
        self.moments.update(values)
        self.histogram.update(values)
        if self.reservoir is not None:
            self.reservoir.update(values)
        return self

    def _fit_sample(self) -> np.ndarray | None:
        if self._whole_sample is not None:
            return self._whole_sample
        return self.reservoir.sample() if self.reservoir is not None else None

    def write(self, records: RecordBuilder, component: str, layer: int | None = None, head: int | None = None) -> None:
        write_summaries(records, [(self, component, layer, head)])


Item = tuple[DistributionSummary, str, int | None, int | None]  # summary, component, layer, head


def write_summaries(records: RecordBuilder, items: Sequence[Item]) -> None:
    """Write (summary, component, layer, head) items in order, their fits computed as one batch."""
    samples: dict[int, np.ndarray] = {}
    for i, (summary, component, layer, _) in enumerate(items):
        sample, m = summary._fit_sample(), summary.moments
        if sample is None:
            continue
        if not (math.isfinite(m.mean) and math.isfinite(m.max_abs)) or m.m2 == 0:
            log.warning("%s layer %s: non-finite entries or no spread; fits skipped", component, layer)
            continue
        try:
            check_fit_sample(sample)
        except ValueError as error:  # e.g. a mostly-zero matrix whose sample has no spread
            log.warning("%s layer %s: fits skipped: %s", component, layer, error)
            continue
        samples[i] = sample
    reports = {}
    for seed in sorted({items[i][0].seed for i in samples}):
        batch = [i for i in samples if items[i][0].seed == seed]
        fitted = fit_many([samples[i] for i in batch], max_samples=max(len(samples[i]) for i in batch), seed=seed)
        reports |= dict(zip(batch, fitted, strict=True))
    for i, (summary, component, layer, head) in enumerate(items):
        m, h = summary.moments, summary.histogram
        stats = {
            "n_entries": m.count, "mean": m.mean, "std": m.std, "skew": m.skew,
            "excess_kurtosis": m.excess_kurtosis, "max_abs": m.max_abs,
            "histogram_underflow": h.underflow, "histogram_overflow": h.overflow,
        }  # fmt: skip
        records.array(component, "histogram", h.counts, layer=layer, head=head)
        records.array(component, "histogram_edges", summary.edges, layer=layer, head=head)
        if i in reports:
            report = reports[i]
            stats |= report.scalars() | {"subsampled": float(m.count > report.n_fit)}
            records.array(component, "qq_gaussian", report.qq_gaussian, layer=layer, head=head)
            records.array(component, "qq_powerlaw", report.qq_powerlaw, layer=layer, head=head)
            records.array(component, "best_family", [report.best_family], layer=layer, head=head)
        for stat, value in stats.items():
            records.scalar(component, stat, value, layer=layer, head=head)
