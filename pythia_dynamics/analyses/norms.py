"""Size of every weight: Frobenius norm, mean, standard deviation and largest magnitude.

Definitions (over all entries of the tensor as TransformerLens holds it, raw unless the model was
loaded processed): `frobenius_norm` = sqrt(sum w^2) (not squared), `mean`, `std` = population
standard deviation (ddof 0), `max_abs` = max |w|. Sums run in float64 over cache-sized blocks, each
block's mean and sum of squared deviations merged with Chan, Golub & LeVeque's update (so the std of
a tensor close to constant, a layer norm's weight early in training, keeps its digits), and
`frobenius_norm` = sqrt(Σ (w − mean)² + n · mean²).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.weights import component_weights, float64_blocks


def moments(tensor: Float[Tensor, "..."]) -> dict[str, float]:
    """{frobenius_norm, mean, std, max_abs} of all entries, as the module docstring defines them."""
    count, mean, squared_deviations, max_abs = 0, 0.0, 0.0, 0.0
    for (block,) in float64_blocks(tensor):
        n = block.numel()
        low, high = (x.item() for x in torch.aminmax(block))
        max_abs = max(max_abs, -low, high)
        block_mean = block.mean().item()
        centred = block.view(-1).sub_(block_mean)
        block_squares = torch.dot(centred, centred).item()
        delta, total = block_mean - mean, count + n
        mean += delta * n / total
        squared_deviations += block_squares + delta * delta * count * n / total
        count = total
    return {
        "frobenius_norm": math.sqrt(squared_deviations + count * mean * mean),
        "mean": mean,
        "std": math.sqrt(squared_deviations / count),
        "max_abs": max_abs,
    }


@register("weight_norms", needs="weights")
@torch.no_grad()
def weight_norms(model) -> Records:
    """Frobenius norm, mean, std and max |w| of every weight matrix, bias and layer-norm parameter."""
    records = RecordBuilder()
    for (component, layer), tensor in component_weights(model).items():
        for stat, value in moments(tensor).items():
            records.scalar(component, stat, value, layer=layer)
    return records.build()
