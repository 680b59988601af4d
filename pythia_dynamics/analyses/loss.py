"""Language-modelling loss on the evaluation batch."""

from __future__ import annotations

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.passes import Passes, run_passes
from pythia_dynamics.records import RecordBuilder, Records


@register("eval_loss", needs="forward")
def eval_loss(model, passes: Passes | None = None, tokens=None) -> Records:
    """Mean next-token cross-entropy on the evaluation batch (nats per token), component 'model'."""
    if passes is None:
        if tokens is None:
            raise ValueError("eval_loss needs the evaluation batch: pass passes= or tokens=")
        passes = run_passes(model, tokens)
    records = RecordBuilder()
    records.scalar("model", "loss", passes.loss)
    return records.build()
