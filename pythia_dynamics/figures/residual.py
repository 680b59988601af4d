"""Residual-stream outliers: max |activation| per block over training, and the max ever against depth."""

from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go

from pythia_dynamics.figures.curves import across_models
from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section


@section("residual_outliers", arrays=[dict(name=["top_dims"], component=["hook_resid_post"])])
def residual_outliers_section(inputs: SectionInputs) -> Section:
    figures = []
    post = inputs.scalars.query("component == 'hook_resid_post' and stat == 'max_abs'")
    for model, rows in post.groupby("model"):
        layers = sorted(int(v) for v in rows["layer"].unique())
        palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
        over_training = go.Figure()
        for colour, layer in zip(palette, layers):
            trace = rows[rows["layer"] == layer].sort_values("step")
            over_training.add_trace(go.Scatter(x=trace["step"], y=trace["value"], mode="lines",
                                               name=f"block {layer}", line=dict(color=colour)))  # fmt: skip
        over_training.update_layout(
            title=f"{model}: outlier norm (max |activation| of hook_resid_post) per block",
            xaxis_title="training step", yaxis_title="max |activation|", legend_title="block",
        )  # fmt: skip
        figures.append(log_x_toggle(over_training))
        max_ever = rows.groupby("layer")["value"].max()
        by_depth = go.Figure(go.Scatter(x=max_ever.index.astype(int), y=max_ever.values, mode="lines+markers", name=model))
        by_depth.update_layout(
            title=f"{model}: maximum outlier norm ever seen, by block (over the swept checkpoints)",
            xaxis_title="block (depth)", yaxis_title="max |activation| over training", xaxis_dtick=1,
        )
        figures.append(by_depth)
    figures += across_models(
        inputs.scalars, "hook_resid_post", "max_abs", reduce="max",
        title="Outlier norm (largest max |activation| over blocks), every model", y_title="max |activation|",
        source_meta=inputs.source_meta,
    )  # fmt: skip
    tops = inputs.arrays.query("component == 'hook_resid_post' and name == 'top_dims'")
    notes = []
    if len(tops):
        last = tops[tops["step"] == tops.groupby("model")["step"].transform("max")]
        table = last.assign(
            top_dims=last["values"].map(lambda v: ", ".join(str(int(x)) for x in v))
        )[["model", "step", "layer", "top_dims"]]
        notes.append("<p>Outlier dimensions (largest max |activation| first) at the last checkpoint:</p>"
                     + table.to_html(index=False, border=0, classes="summary"))  # fmt: skip
    return Section(
        "Residual-stream outliers",
        intro=(
            "Max |activation| over the evaluation batch at each block's hook_resid_post (all hook points, "
            "token norms and per-dimension maxima are in the store)."
        ),
        figures=figures,
        notes=notes,
    )
