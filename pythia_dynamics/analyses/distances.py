"""How far each weight has moved: Euclidean (Frobenius) distances to the first and final checkpoints.

For every (component, layer) of `pythia_dynamics.weights.component_weights`:
- `distance_from_initial` = ‖W − W_first‖_F, the first checkpoint of the source's schedule (step 0,
  the initialisation, for current Pythia; step 1000 for v0 models);
- `relative_distance_from_initial` = ‖W − W_first‖_F / ‖W_first‖_F (NaN where W_first is all zeros,
  as biases are at initialisation);
- `distance_to_final` = ‖W − W_final‖_F, the last checkpoint of the schedule.
Plain norms, never squared. (The source study's released "diff" was undefined and partly squared.)
"""

from __future__ import annotations

import math

import torch

from pythia_dynamics.analyses.registry import register
from pythia_dynamics.records import RecordBuilder, Records
from pythia_dynamics.weights import component_weights


@register("weight_distances", needs="weights", references=True)
@torch.no_grad()
def weight_distances(model, passes=None, *, references: dict | None = None) -> Records:
    """Frobenius distance of every weight from the first and to the final checkpoint (and relative)."""
    if not references:
        raise ValueError(
            "weight_distances needs the first and final checkpoints' weights: references="
            "{'initial': component_weights(first_model), 'final': component_weights(final_model)}"
        )
    records = RecordBuilder()
    for key, tensor in component_weights(model).items():
        w = tensor.detach().cpu().double()
        initial = references["initial"][key].double()
        initial_norm = torch.linalg.vector_norm(initial).item()
        from_initial = torch.linalg.vector_norm(w - initial).item()
        component, layer = key
        records.scalar(component, "distance_from_initial", from_initial, layer=layer)
        records.scalar(
            component, "relative_distance_from_initial", from_initial / initial_norm if initial_norm else math.nan,
            layer=layer,
        )  # fmt: skip
        records.scalar(component, "distance_to_final", torch.linalg.vector_norm(w - references["final"][key].double()).item(), layer=layer)
    return records.build()
