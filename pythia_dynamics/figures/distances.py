"""How far weights move: distance from the first checkpoint and to the final one, per block."""

from __future__ import annotations

from pythia_dynamics.figures.curves import per_block_curves
from pythia_dynamics.figures.norms import learning_rate_figures
from pythia_dynamics.figures.sections import Section, SectionInputs, section


@section("weight_distances")
def weight_distances_section(inputs: SectionInputs) -> Section:
    figures = per_block_curves(
        inputs.scalars, "distance_from_initial", title="‖W − W_first‖_F: distance from the first checkpoint",
        y_title="‖W − W_first‖_F",
    ) + per_block_curves(
        inputs.scalars, "distance_to_final", title="‖W − W_final‖_F: distance to the final checkpoint",
        y_title="‖W − W_final‖_F",
    )  # fmt: skip
    return Section(
        "Weight movement",
        intro=(
            "Frobenius distance of each weight from the first checkpoint of the schedule and to the last; "
            "relative distances (÷ ‖W_first‖_F) are in the store as relative_distance_from_initial."
        ),
        figures=figures + learning_rate_figures(inputs),
    )
