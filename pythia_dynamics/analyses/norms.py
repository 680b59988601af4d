"""Size of every weight: Frobenius norm, mean, standard deviation and largest magnitude.

Definitions (over all entries of the tensor as TransformerLens holds it, raw unless the model was
loaded processed): `frobenius_norm` = sqrt(sum w^2) (not squared), `mean`, `std` = population
standard deviation (ddof 0), `max_abs` = max |w|.
"""

from __future__ import annotations

import torch

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.weights import component_weights


@register("weight_norms", needs="weights")
@torch.no_grad()
def weight_norms(model, passes=None) -> Records:
    """Frobenius norm, mean, std and max |w| of every weight matrix, bias and layer-norm parameter."""
    records = RecordBuilder()
    for (component, layer), tensor in component_weights(model).items():
        w = tensor.double()
        stats = {
            "frobenius_norm": torch.linalg.vector_norm(w),
            "mean": w.mean(),
            "std": w.std(correction=0),
            "max_abs": w.abs().max(),
        }
        for stat, value in stats.items():
            records.scalar(component, stat, value, layer=layer)
    return records.build()
