"""Weight norms over training: one colour per block, one panel per component, learning rate beside."""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section

# The study's components first; the rest of what weight_norms records stays in the store.
HEADLINE_COMPONENTS = ["W_QKV", "W_O", "W_in", "W_out", "b_in", "b_out", "ln1.w", "ln2.w",
                       "W_E", "W_U", "ln_final.w", "ln_final.b"]  # fmt: skip


@section("weight_norms")
def weight_norms_section(inputs: SectionInputs) -> Section:
    norms = inputs.scalars.query("stat == 'frobenius_norm'")
    figures = []
    for model, rows in norms.groupby("model"):
        components = [c for c in HEADLINE_COMPONENTS if c in set(rows["component"])]
        fig = make_subplots(rows=(len(components) + 2) // 3, cols=3, subplot_titles=components)
        layers = sorted(int(v) for v in rows["layer"].dropna().unique())
        palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
        colour = dict(zip(layers, palette))
        for i, component in enumerate(components):
            for layer, trace_rows in rows[rows["component"] == component].groupby("layer", dropna=False):
                trace_rows = trace_rows.sort_values("step")
                is_block = bool(trace_rows["layer"].notna().all())
                fig.add_trace(
                    go.Scatter(
                        x=trace_rows["step"], y=trace_rows["value"], mode="lines",
                        name=f"block {int(layer)}" if is_block else component,
                        legendgroup=f"block {int(layer)}" if is_block else component,
                        showlegend=is_block and i == 0,
                        line=dict(color=colour[int(layer)] if is_block else "black"),
                    ),
                    row=i // 3 + 1, col=i % 3 + 1,
                )  # fmt: skip
        fig.update_layout(
            title=f"{model}: Frobenius norm ‖W‖_F (not squared) over training", height=260 * ((len(components) + 2) // 3),
            legend_title="block",
        )
        fig.update_xaxes(title_text="training step")
        figures.append(log_x_toggle(fig))
    figures += _learning_rate_figures(inputs)
    return Section(
        "Weight norms",
        intro=(
            "Frobenius norm of each raw weight matrix, bias and layer-norm parameter per checkpoint "
            "(all statistics, including mean, std and max |w|, are in the store's scalars table)."
        ),
        figures=figures,
    )


def _learning_rate_figures(inputs: SectionInputs) -> list[go.Figure]:
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
