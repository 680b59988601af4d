"""Distributions of residual-stream activations at every block, on the evaluation batch.

At the hook points of `residual_outliers` (every `hook_resid_pre`, `hook_resid_post`, and
`ln_final.hook_normalized`), over every token and dimension of the batch: the records of
`pythia_dynamics.summaries.DistributionSummary` on `ACTIVATION_BINS` — moments (excess kurtosis,
skew ...), a fixed-bin histogram, and the Gaussian/logistic/Student-t/gennorm/power-law fits on a
seeded sample of at most 50,000 values drawn from the whole batch (the same sample however the batch
is chunked). Component and layer as in `residual_outliers`.
"""

from __future__ import annotations

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.analyses.residual import residual_hooks
from pythia_dynamics.passes import BatchTotals, ChunkPasses
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.summaries import ACTIVATION_BINS, DistributionSummary


@register("residual_distributions", needs="forward")
class ResidualDistributions:
    """Histograms, excess kurtosis and distribution fits of residual-stream activations at every block."""

    def __init__(self, model):
        self.points = residual_hooks(model)
        self.hooks = [hook for hook, _, _ in self.points]
        self.summaries = {hook: DistributionSummary(ACTIVATION_BINS) for hook in self.hooks}

    def update(self, chunk: ChunkPasses) -> None:
        for hook in self.hooks:
            self.summaries[hook].update(chunk.activations[hook])

    def finish(self, totals: BatchTotals) -> Records:
        records = RecordBuilder()
        for hook, component, layer in self.points:
            self.summaries[hook].write(records, component, layer)
        return records.build()
