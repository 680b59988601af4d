"""The integrity audit's section: which checkpoints are suspect and why, and the model's published defects.

Placed first in the report: every later figure over training marks the suspect checkpoints
(`sections.mark_suspect_steps`), and this section says what each mark means.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.catalog import known_defects
from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section, stored_suspects
from pythia_dynamics.store import describe_steps


@section("audit", arrays=[dict(name=["reasons"])])
def audit_section(inputs: SectionInputs) -> Section:
    s = inputs.scalars
    suspects = stored_suspects(s, inputs.arrays)
    notes = []
    for model, rows in s.groupby("model"):
        audited = sorted(rows["step"].unique())
        flagged = suspects.get(model, {})
        summary = (f"<p><b>{html.escape(model)}</b>: {len(audited)} checkpoint(s) audited ({describe_steps(audited)}), "
                   f"{len(flagged)} suspect.</p>")  # fmt: skip
        if flagged:
            body = "".join(f"<tr><td>{step}</td><td>{html.escape(why).replace(chr(10), '<br>')}</td></tr>"
                           for step, why in sorted(flagged.items()))  # fmt: skip
            summary += f'<table class="summary"><tr><th>step</th><th>reasons</th></tr>{body}</table>'
        defects = known_defects(model)
        if defects:
            items = "".join(
                f'<li><a href="{d.url}">EleutherAI/pythia#{d.issue}</a>: {html.escape(d.summary)}'
                f"{' (' + html.escape(d.scope) + ')' if d.scope else ''}</li>"
                for d in defects
            )
            summary += f"<p>Published defects of this model (flagged whether or not those checkpoints were read):</p><ul>{items}</ul>"
        notes.append(summary)
    return Section(
        "Checkpoint integrity audit",
        intro=(
            "Each checkpoint was checked against the others before its results are believed (docs/audit.md): "
            "identical weights anywhere in the schedule, tensors or shards byte-identical to another step's, "
            "breaks in the trajectory of norms and distances to the first and final checkpoints, config and "
            "layout changes, missing steps and the model's published defects. Suspect checkpoints are marked "
            "with dotted red lines in every figure over training below."
        ),
        figures=_distance_figures(s, suspects),
        notes=notes,
    )


def _distance_figures(scalars, suspects) -> list[go.Figure]:
    figures = []
    for model, rows in scalars.groupby("model"):
        fig = make_subplots(rows=1, cols=3, subplot_titles=["‖θ‖", "‖θ − θ_first‖", "‖θ − θ_final‖"])
        for col, stat in enumerate(("norm", "distance_from_initial", "distance_to_final"), start=1):
            series = rows[rows["stat"] == stat].dropna(subset=["value"]).sort_values("step")
            fig.add_trace(go.Scatter(x=series["step"], y=series["value"], mode="lines+markers", name=stat,
                                     showlegend=False, line=dict(color="black")), row=1, col=col)  # fmt: skip
        if not any(len(t.x) for t in fig.data):
            continue
        fig.update_layout(title=f"{model}: the whole checkpoint's norm and distances (audit features)", height=320)
        fig.update_xaxes(title_text="training step")
        figures.append(log_x_toggle(fig))
    return figures
