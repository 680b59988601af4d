"""Residual-stream outliers by block, on the sweep's fixed evaluation batch.

Hook points: every block's `hook_resid_pre` and `hook_resid_post` (Pythia's blocks are parallel,
so there is no `hook_resid_mid`), and `ln_final.hook_normalized` (after the final layer norm). The
component column holds the hook name without its block prefix; layer is the block (None for ln_final).

Scalars per hook point:
- `max_abs`: max |activation| over every token and dimension (the study's "outlier norm");
- `max_token_norm` / `mean_token_norm`: the largest / mean L2 norm of a token's residual vector;
- `top_dim_argmax_fraction`: how often the top outlier dimension is a token's largest |activation|.
Arrays: `dim_max_abs` (max |activation| of each of the d_model dimensions), `top_dims` (the
`TOP_DIMS` dimensions with the largest max |activation|, largest first) with `top_dims_max_abs` and
`top_dims_argmax_fraction` (the fraction of tokens whose largest |activation| is in that dimension).
The running maximum-ever per block over a sweep is `max_abs` accumulated over steps, computed where
it is plotted. All statistics accumulate exactly across chunks of the batch.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.installers import family_of_model
from pythia_dynamics.passes import BatchTotals, ChunkPasses
from pythia_dynamics.records import RecordBuilder, Records

__all__ = ["ResidualOutliers", "residual_hooks"]

TOP_DIMS = 5


def residual_hooks(model) -> list[tuple[str, str, int | None]]:
    """(hook name, component, layer) for every residual-stream hook point, in depth order."""
    points = []
    for layer in range(model.cfg.n_layers):
        points.append((f"blocks.{layer}.hook_resid_pre", "hook_resid_pre", layer))
    for layer in range(model.cfg.n_layers):
        points.append((f"blocks.{layer}.hook_resid_post", "hook_resid_post", layer))
    # TransformerBridge (3.9 and 4.3) fails a backward pass through a hooked final norm that has no weight
    # (OLMo-1's parameter-free LayerNorm: "NormalizationBridge object has no attribute 'weight'"), so
    # that family's residual stream is read up to the last block's output.
    if "ln_final.w" in {target for target, _ in family_of_model(model).model_layout.values()}:
        points.append(("ln_final.hook_normalized", "ln_final.hook_normalized", None))
    return points


class _OutlierStats:
    """Accumulated on the activations' device (a CUDA sweep moves nothing to the CPU until `write`)."""

    def __init__(self, d_model: int):
        self.d_model = d_model
        self.dim_max_abs = torch.zeros(d_model, dtype=torch.float64)
        self.argmax_counts = torch.zeros(d_model, dtype=torch.int64)
        self.max_token_norm = torch.zeros((), dtype=torch.float64)
        self.sum_token_norm = torch.zeros((), dtype=torch.float64)
        self.n_tokens = 0

    def update(self, x: Float[Tensor, "batch pos d_model"]) -> None:
        x = x.detach().double().flatten(0, 1)  # [token, d_model]
        if self.dim_max_abs.device != x.device:
            self._move_to(x.device)
        magnitude = x.abs()
        self.dim_max_abs = torch.maximum(self.dim_max_abs, magnitude.amax(dim=0))
        self.argmax_counts += torch.bincount(magnitude.argmax(dim=1), minlength=x.shape[1])
        norms = torch.linalg.vector_norm(x, dim=1)
        self.max_token_norm = torch.maximum(self.max_token_norm, norms.max())
        self.sum_token_norm = self.sum_token_norm + norms.sum()
        self.n_tokens += x.shape[0]

    def _move_to(self, device: torch.device) -> None:
        for name in ("dim_max_abs", "argmax_counts", "max_token_norm", "sum_token_norm"):
            setattr(self, name, getattr(self, name).to(device))

    def write(self, records: RecordBuilder, component: str, layer: int | None) -> None:
        self._move_to(torch.device("cpu"))
        top = torch.argsort(self.dim_max_abs, descending=True)[:TOP_DIMS]
        argmax_fraction = self.argmax_counts.double() / max(self.n_tokens, 1)
        records.scalar(component, "max_abs", self.dim_max_abs.max(), layer=layer)
        records.scalar(component, "max_token_norm", self.max_token_norm.item(), layer=layer)
        records.scalar(component, "mean_token_norm", self.sum_token_norm.item() / max(self.n_tokens, 1), layer=layer)
        records.scalar(component, "top_dim_argmax_fraction", argmax_fraction[top[0]], layer=layer)
        records.array(component, "dim_max_abs", self.dim_max_abs, layer=layer)
        records.array(component, "top_dims", top, layer=layer)
        records.array(component, "top_dims_max_abs", self.dim_max_abs[top], layer=layer)
        records.array(component, "top_dims_argmax_fraction", argmax_fraction[top], layer=layer)


@register("residual_outliers", needs="forward")
class ResidualOutliers:
    """Max |activation|, token norms and the outlier dimensions of the residual stream at every block."""

    def __init__(self, model):
        self.points = residual_hooks(model)
        self.hooks = [hook for hook, _, _ in self.points]
        self.stats = {hook: _OutlierStats(model.cfg.d_model) for hook in self.hooks}

    def update(self, chunk: ChunkPasses) -> None:
        for hook in self.hooks:
            self.stats[hook].update(chunk.activations[hook])

    def finish(self, totals: BatchTotals) -> Records:
        records = RecordBuilder()
        for hook, component, layer in self.points:
            self.stats[hook].write(records, component, layer)
        return records.build()
