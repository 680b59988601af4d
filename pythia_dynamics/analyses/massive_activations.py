"""Massive activations: the largest residual-stream entries per block, where they sit and how far they stand out.

After Sun et al. (2024), "Massive activations in large language models": a few residual-stream
entries, at fixed dimensions and mostly on the first token, grow to hundreds or thousands of times
the median magnitude and act as fixed biases.

Hook points: `blocks.0.hook_resid_pre` (the embeddings, component `hook_resid_pre`, layer 0) and
every block's `hook_resid_post` (component `hook_resid_post`, layer L). On the sweep's evaluation
batch (shared forward pass), with x[b, p, d] the activation:
- `m[p, d] = max_b |x[b, p, d]|`, the largest magnitude at each (position, dimension) over the
  batch's sequences; the top `TOP_K` = 5 entries of m (distinct position-dimension pairs, largest
  first) are the arrays `top_abs`, `top_position`, `top_dim` and `top_ratio` (= top_abs / median_abs);
- `median_abs`: the median of |x| over every entry of the batch (exact: the magnitudes are kept,
  as float32, until the pass ends; torch's lower median for an even count);
- `top1_abs`, `top1_ratio`, `top1_position`, `top1_dim`: the largest entry's; `top1_on_first_token`:
  1.0 when it is at position 0, else 0.0.
Positions count from the start of each evaluation window (evaluation windows start mid-text, so
position 0 is the first token the model sees, not necessarily a BOS token).
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.passes import BatchTotals, ChunkPasses
from pythia_dynamics.records import RecordBuilder, Records

__all__ = ["MassiveActivations", "massive_hooks", "top_entries"]

TOP_K = 5


def massive_hooks(model) -> list[tuple[str, str, int]]:
    """(hook name, component, layer): the embeddings, then each block's output."""
    points = [("blocks.0.hook_resid_pre", "hook_resid_pre", 0)]
    return points + [(f"blocks.{L}.hook_resid_post", "hook_resid_post", L) for L in range(model.cfg.n_layers)]


def top_entries(max_abs: Float[Tensor, "pos d_model"], k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The k largest entries of `max_abs`: (values, positions, dimensions), largest first."""
    values, flat = torch.topk(rearrange(max_abs, "pos d_model -> (pos d_model)"), min(k, max_abs.numel()))
    return values, flat // max_abs.shape[1], flat % max_abs.shape[1]


class _BlockStats:
    def __init__(self):
        self.max_abs: Tensor | None = None  # [pos, d_model]
        self.magnitudes: list[Tensor] = []

    def update(self, x: Float[Tensor, "batch pos d_model"]) -> None:
        magnitude = x.detach().abs()
        chunk_max = reduce(magnitude, "batch pos d_model -> pos d_model", "max").double()
        self.max_abs = chunk_max if self.max_abs is None else torch.maximum(self.max_abs, chunk_max)
        self.magnitudes.append(magnitude.float().flatten())

    def write(self, records: RecordBuilder, component: str, layer: int) -> None:
        median = torch.cat(self.magnitudes).median().double().item()
        values, positions, dims = (t.cpu() for t in top_entries(self.max_abs, TOP_K))
        ratios = values / median if median > 0 else torch.full_like(values, float("inf"))
        records.scalar(component, "median_abs", median, layer=layer)
        records.scalar(component, "top1_abs", values[0], layer=layer)
        records.scalar(component, "top1_ratio", ratios[0], layer=layer)
        records.scalar(component, "top1_position", positions[0], layer=layer)
        records.scalar(component, "top1_dim", dims[0], layer=layer)
        records.scalar(component, "top1_on_first_token", float(positions[0] == 0), layer=layer)
        records.array(component, "top_abs", values, layer=layer)
        records.array(component, "top_ratio", ratios, layer=layer)
        records.array(component, "top_position", positions, layer=layer)
        records.array(component, "top_dim", dims, layer=layer)


@register("massive_activations", needs="forward")
class MassiveActivations:
    """Per block: the largest residual-stream magnitudes, their position and dimension, ratio to the median."""

    def __init__(self, model):
        self.points = massive_hooks(model)
        self.hooks = [hook for hook, _, _ in self.points]
        self.stats = {hook: _BlockStats() for hook in self.hooks}

    def update(self, chunk: ChunkPasses) -> None:
        for hook in self.hooks:
            self.stats[hook].update(chunk.activations[hook])

    def finish(self, totals: BatchTotals) -> Records:
        records = RecordBuilder()
        for hook, component, layer in self.points:
            self.stats[hook].write(records, component, layer)
        return records.build()
