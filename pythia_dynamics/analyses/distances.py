"""How far each weight has moved: Euclidean (Frobenius) distances to the first and final checkpoints.

For every (component, layer) of `pythia_dynamics.weights.component_weights`:
- `distance_from_initial` = ‖W − W_first‖_F, the first checkpoint of the source's schedule (step 0,
  the initialisation, for current Pythia; step 1000 for v0 models);
- `relative_distance_from_initial` = ‖W − W_first‖_F / ‖W_first‖_F (NaN where W_first is all zeros,
  as biases are at initialisation);
- `distance_to_final` = ‖W − W_final‖_F, the last checkpoint of the schedule.
Plain norms, never squared. (The source study's released "diff" was undefined and partly squared.)
Differences and sums are taken in float64 (the difference of two float32 or float16 weights is exact
there), so identical weights are exactly 0 apart. `W_QKV`'s sums are those of `W_Q`, `W_K` and `W_V`,
whose entries it holds.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.weights import component_weights, float64_blocks


def squared_distances(
    weight: Float[Tensor, "..."], initial: Float[Tensor, "..."], final: Float[Tensor, "..."]
) -> tuple[float, float, float]:
    """(‖W − W_first‖_F², ‖W_first‖_F², ‖W − W_final‖_F²), in one pass over the three tensors."""
    from_initial = initial_norm = to_final = 0.0
    for w, first, last in float64_blocks(weight, initial, final):
        w, first, last = w.view(-1), first.view(-1), last.view(-1)
        initial_norm += torch.dot(first, first).item()
        first.sub_(w)
        last.sub_(w)
        from_initial += torch.dot(first, first).item()
        to_final += torch.dot(last, last).item()
    return from_initial, initial_norm, to_final


@register("weight_distances", needs="weights", references=True)
@torch.no_grad()
def weight_distances(model, *, references: dict | None = None) -> Records:
    """Frobenius distance of every weight from the first and to the final checkpoint (and relative)."""
    if not references:
        raise ValueError(
            "weight_distances needs the first and final checkpoints' weights: references="
            "{'initial': component_weights(first_model), 'final': component_weights(final_model)}"
        )
    weights = component_weights(model)
    squares = {
        key: squared_distances(tensor, references["initial"][key], references["final"][key])
        for key, tensor in weights.items()
        if key[0] != "W_QKV"
    }
    records = RecordBuilder()
    for component, layer in weights:
        if component == "W_QKV":  # Q, K and V side by side: its sums are theirs (and the stored one is a copy)
            from_initial, initial_norm, to_final = map(sum, zip(*(squares[(f"W_{x}", layer)] for x in "QKV")))
        else:
            from_initial, initial_norm, to_final = squares[(component, layer)]
        from_initial, initial_norm, to_final = math.sqrt(from_initial), math.sqrt(initial_norm), math.sqrt(to_final)
        records.scalar(component, "distance_from_initial", from_initial, layer=layer)
        records.scalar(
            component, "relative_distance_from_initial", from_initial / initial_norm if initial_norm else math.nan,
            layer=layer,
        )  # fmt: skip
        records.scalar(component, "distance_to_final", to_final, layer=layer)
    return records.build()
