"""Gradients of the language-modelling loss on the evaluation batch, for weights and the residual stream.

One backward pass of the batch's mean next-token loss per checkpoint (shared with every other
backward analysis; chunked batches give the same gradients, see `pythia_dynamics.passes`).

- Weights: for every component of `pythia_dynamics.parameter_names.component_gradients` (read from
  `named_parameters()`, which both backends train), `grad_frobenius_norm` = ‖∂L/∂W‖_F. For the weight
  matrices the source study plotted (`DISTRIBUTION_COMPONENTS`: W_QKV, W_O, W_in, W_out, W_E, W_U),
  also the full `DistributionSummary` records (moments, histogram on `GRADIENT_BINS`, fits) under
  component names prefixed `grad.` (e.g. `grad.W_out`), so they never mix with the weights' own.
  Their fits use the same fixed positions at every checkpoint (`DistributionSummary.of`, as the weights'
  do; version 1 drew a reservoir sample).
  Where a family ties the unembedding to the embedding (GPT-2, some OLMo and LLaMA sizes), a
  TransformerBridge trains one parameter for both: its gradient (of both uses) is recorded as W_E's and
  W_U has none; HookedTransformer unties them and records each use's gradient separately.
- Residual stream: ∂L/∂activation at the `residual_outliers` hook points, through backward hooks:
  `max_abs`, `max_token_norm` and the `DistributionSummary` records, components `grad.hook_resid_pre`,
  `grad.hook_resid_post`, `grad.ln_final.hook_normalized`.
"""

from __future__ import annotations

import math

import torch

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.analyses.residual import residual_hooks
from pythia_dynamics.fits import DEFAULT_MAX_SAMPLES
from pythia_dynamics.installers import family_of_model
from pythia_dynamics.parameter_names import component_gradients
from pythia_dynamics.passes import BatchTotals, ChunkPasses
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.summaries import GRADIENT_BINS, DistributionSummary, write_summaries

DISTRIBUTION_COMPONENTS = ("W_QKV", "W_O", "W_in", "W_out", "W_E", "W_U")
FIT_SAMPLES = DEFAULT_MAX_SAMPLES  # entries of each weight gradient its fits see


@register("gradients", needs="backward", version=2)  # 2: weight-gradient fits on fixed positions
class Gradients:
    """Norms, histograms and fits of weight gradients and residual-stream gradients on the evaluation batch."""

    def __init__(self, model):
        self.family = family_of_model(model)
        self.points = residual_hooks(model)
        self.hooks = [hook for hook, _, _ in self.points]
        self.summaries = {hook: DistributionSummary(GRADIENT_BINS) for hook in self.hooks}
        self.max_token_norm = {hook: 0.0 for hook in self.hooks}

    def update(self, chunk: ChunkPasses) -> None:
        for hook in self.hooks:
            grad = chunk.activation_grads[hook]
            self.summaries[hook].update(grad)
            norms = torch.linalg.vector_norm(grad.double(), dim=-1)
            self.max_token_norm[hook] = max(self.max_token_norm[hook], norms.max().item())

    @torch.no_grad()
    def finish(self, totals: BatchTotals) -> Records:
        records = RecordBuilder()
        summaries = []
        for (component, layer), grad in component_gradients(totals.grads, self.family).items():
            if component in DISTRIBUTION_COMPONENTS:
                # held whole: fitted on fixed positions (as the weights are), not a reservoir that draws a
                # random key for each of W_E's tens of millions of entries
                summary = DistributionSummary.of(grad, GRADIENT_BINS, max_samples=FIT_SAMPLES)
                summaries.append((summary, f"grad.{component}", layer, None))
                # the float64 sum of squares the moments already hold (a float64 copy of W_E's gradient
                # for the norm alone would cost more; a float32 sum of 25M squares is off by ~1e-4)
                m = summary.moments
                norm = math.sqrt(m.m2 + m.count * m.mean**2)
            else:
                norm = torch.linalg.vector_norm(grad, dtype=torch.float64).item()
            records.scalar(component, "grad_frobenius_norm", norm, layer=layer)
        for hook, component, layer in self.points:
            summaries.append((self.summaries[hook], f"grad.{component}", layer, None))
            records.scalar(f"grad.{component}", "max_token_norm", self.max_token_norm[hook], layer=layer)
        write_summaries(records, summaries)  # every fit of the checkpoint in one batch
        return records.build()
