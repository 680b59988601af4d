"""Weight norms over training: one colour per block, one panel per component, learning rate beside."""

from __future__ import annotations

import plotly.graph_objects as go

from pythia_dynamics.figures.curves import across_models, per_block_curves
from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section


@section("weight_norms")
def weight_norms_section(inputs: SectionInputs) -> Section:
    figures = per_block_curves(
        inputs.scalars, "frobenius_norm", title="Frobenius norm ‖W‖_F (not squared) over training", y_title="‖W‖_F"
    )
    return Section(
        "Weight norms",
        intro=(
            "Frobenius norm of each raw weight matrix, bias and layer-norm parameter per checkpoint "
            "(all statistics, including mean, std and max |w|, are in the store's scalars table)."
        ),
        figures=figures + mlp_norms_across_models(inputs) + learning_rate_figures(inputs),
    )


def mlp_norms_across_models(inputs: SectionInputs):
    return [
        fig
        for component in ("W_in", "W_out")
        for fig in across_models(
            inputs.scalars, component, "frobenius_norm", reduce="mean",
            title=f"{component}: Frobenius norm averaged over blocks, every model", y_title="mean over blocks of ‖W‖_F",
            source_meta=inputs.source_meta,
        )
    ]  # fmt: skip


def learning_rate_figures(inputs: SectionInputs) -> list[go.Figure]:
    """The learning rate at each checkpoint, where the source knows its schedule."""
    fig = go.Figure()
    for model, meta in inputs.source_meta.items():
        schedule = (meta.get("metadata") or {}).get("lr_schedule", {}).get("lr_at_checkpoint")
        if schedule:
            steps = sorted(int(s) for s in schedule)
            fig.add_trace(go.Scatter(x=steps, y=[schedule[str(s)] for s in steps], mode="lines", name=model))
    if not fig.data:
        return []
    fig.update_layout(title="Learning rate at each checkpoint", xaxis_title="training step",
                      yaxis_title="learning rate", height=300)  # fmt: skip
    return [log_x_toggle(fig)]
