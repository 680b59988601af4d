"""The evaluation loss over training, one line per model."""

from __future__ import annotations

import plotly.graph_objects as go

from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section


@section("eval_loss")
def eval_loss_section(inputs: SectionInputs) -> Section:
    fig = go.Figure()
    for model, rows in inputs.scalars.query("stat == 'loss'").groupby("model"):
        rows = rows.sort_values("step")
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["value"], mode="lines+markers", name=model))
    fig.update_layout(
        title="Next-token loss on the fixed evaluation batch",
        xaxis_title="training step",
        yaxis_title="cross-entropy (nats / token)",
        legend_title="model",
    )
    batches = [
        f"<li><b>{model}</b>: {meta.get('eval_batch', {}).get('origin', {})}</li>"
        for model, meta in inputs.source_meta.items()
    ]
    return Section(
        "Evaluation loss",
        intro="Every checkpoint sees the same evaluation batch; where it came from:",
        figures=[log_x_toggle(fig)],
        notes=[f"<ul>{''.join(batches)}</ul>"],
    )
