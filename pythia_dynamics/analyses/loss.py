"""Language-modelling loss on the evaluation batch.

`loss` (component `model`): mean next-token cross-entropy over every prediction in the batch, in
nats per token — the same number whether the batch runs whole or in chunks.
"""

from __future__ import annotations

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.passes import BatchTotals, ChunkPasses
from pythia_dynamics.records import RecordBuilder, Records


@register("eval_loss", needs="forward")
class EvalLoss:
    """Mean next-token cross-entropy on the evaluation batch (nats per token), component 'model'."""

    hooks: list[str] = []

    def __init__(self, model):
        pass

    def update(self, chunk: ChunkPasses) -> None:
        pass

    def finish(self, totals: BatchTotals) -> Records:
        records = RecordBuilder()
        records.scalar("model", "loss", totals.loss)
        return records.build()
