"""SVD direction strings over training: agreement with the final checkpoint, and a token browser.

From the store only: `svd_agreement` turns the stored token ids into the three agreement fractions
(exact, in_final, matched; defined in pythia_dynamics/svd_agreement.py), and `views` draws the
stored strings with circuitsvis (JavaScript inlined once, so the report stays offline).
"""

from __future__ import annotations

import html
import logging

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.figures.sections import Section, SectionInputs, line_mode, log_x_toggle, section
from pythia_dynamics.svd_agreement import METRICS, aggregate, stored_strings, svd_agreement
from pythia_dynamics.views import directions_view, drift_view, offline_html

log = logging.getLogger(__name__)

COMPONENT_TITLES = {"OV": "OV circuits", "W_in": "MLP in (W_in)", "W_out": "MLP out (W_out)", "W_gate": "MLP gate (W_gate)"}
METRIC_TITLES = {"exact": "identical to final", "in_final": "in final direction", "matched": "best match"}
BROWSER_LAYER = -1  # the last block: its MLP writes straight into the unembedding
DRIFT_DIRECTIONS = 10  # ranks offered in the across-checkpoints view
DRIFT_STEPS = 12  # checkpoints shown side by side in it


def agreement(stores) -> pd.DataFrame:
    """The direction-level agreement of every model in `stores` (computed once per report: the events section's
    agreement series are the same computation, `svd_agreement.shared_agreement`); empty without token ids."""
    try:
        return svd_agreement(stores, level="direction")
    except ValueError as error:  # svd_directions results without token id arrays
        log.warning("no SVD agreement: %s", error)
        return pd.DataFrame()


@section("svd_directions", arrays=lambda scalars: drawn_arrays(scalars), derived={"agreement": agreement})
def svd_directions_section(inputs: SectionInputs) -> Section:
    """The agreement curves (from `inputs.derived["agreement"]`, or computed from the token ids in
    `inputs.arrays` when it is not given) and the token browser of the last block."""
    arrays = inputs.arrays
    directions = inputs.derived.get("agreement")
    if directions is None and not arrays.empty:
        directions = svd_agreement(arrays, level="direction")
    if directions is None or directions.empty:
        return Section("SVD directions", intro="The store holds no svd_directions arrays.")
    blocks, models = aggregate(directions, "block"), aggregate(directions, "model")
    figures = [_block_figure(model, rows) for model, rows in blocks.groupby("model", sort=True)]
    figures.append(_model_figure(models))
    return Section(
        "SVD directions: agreement with the final checkpoint",
        intro=(
            "For every OV circuit (W_V W_O per head, output-side singular vectors), MLP input (diag(ln2.w) "
            "W_in, input side) and MLP output (W_out, output side), the top-k tokens of the top-n singular "
            "vectors projected through W_U, compared with the final checkpoint's, direction by direction. "
            "<b>identical</b>: fraction of positions holding the same token (the study's \"fraction identical "
            "to final SVD direction\"); <b>in final</b>: fraction of tokens found anywhere in the final "
            "direction's list (its \"fraction in final SVD direction\"); <b>best match</b>: the largest such "
            "overlap with any final direction on either side (robust to sign flips and swapped ranks). "
            "Block curves average over a block's directions (all heads for OV); the model curve averages the "
            "blocks. For reference, the study's Pythia MLP curves end near 0.85–0.95 (in final) and 0.3–0.53 "
            "(identical) at the second-to-last checkpoint."
        ),
        figures=figures,
        notes=_browser_notes(arrays, inputs.scalars) if not arrays.empty else [],
    )


def drawn_arrays(scalars: pd.DataFrame) -> list[dict]:
    """`Store.arrays` filters of what this section draws from arrays: the token browser's, i.e. the last
    layer (`BROWSER_LAYER`) of each model at the checkpoints the browser shows (`browser_steps`). The
    agreement curves come from the derived table (`agreement`), not from arrays read here."""
    reads = []
    for model, rows in scalars.groupby("model", sort=True):
        layers = sorted(int(v) for v in rows["layer"].dropna().unique())
        if layers:
            names = ["singular_values", *(f"{side}_{what}" for side in ("top", "bottom")
                                          for what in ("token_ids", "logits", "tokens", "escaped"))]  # fmt: skip
            middle, final, drift = browser_steps(rows["step"])
            reads.append(dict(model=[model], layer=[layers[BROWSER_LAYER]], name=names, steps=sorted({middle, final, *drift})))
    return reads


def browser_steps(steps) -> tuple[int, int, list[int]]:
    """The checkpoints the token browser shows of a model swept at `steps`: the middle one and the final
    one (MLP directions; OV at the final), and at most DRIFT_STEPS evenly spread, first and last included
    (the across-checkpoints view; the selection of `views.drift_view`)."""
    steps = sorted({int(s) for s in steps})
    picks = np.unique(np.round(np.linspace(0, len(steps) - 1, min(DRIFT_STEPS, len(steps)))).astype(int))
    return steps[len(steps) // 2], steps[-1], [steps[i] for i in picks]


def _block_figure(model: str, rows: pd.DataFrame) -> go.Figure:
    components = [c for c in COMPONENT_TITLES if c in set(rows["component"].unique())]
    fig = make_subplots(
        rows=len(components), cols=len(METRICS), shared_xaxes=True, shared_yaxes=True,
        subplot_titles=[f"{COMPONENT_TITLES[c]}: {METRIC_TITLES[m]}" for c in components for m in METRICS],
    )  # fmt: skip
    layers = sorted(int(v) for v in rows["layer"].unique())
    palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
    colour = dict(zip(layers, palette))
    for r, component in enumerate(components, start=1):
        for c, metric in enumerate(METRICS, start=1):
            for layer, trace in rows[rows["component"] == component].groupby("layer", sort=True):
                trace = trace.sort_values("step")
                fig.add_trace(
                    go.Scatter(
                        x=trace["step"], y=trace[metric], mode=line_mode(len(rows) * len(METRICS)), name=f"block {int(layer)}",
                        legendgroup=f"block {int(layer)}", showlegend=r == 1 and c == 1,
                        line=dict(color=colour[int(layer)]), marker=dict(size=4),
                    ),
                    row=r, col=c,
                )  # fmt: skip
    fig.update_layout(
        title=f"{model}: SVD direction strings vs the final checkpoint's, per block",
        height=280 * len(components) + 80, legend_title="block",
    )  # fmt: skip
    fig.update_xaxes(title_text="training step", row=len(components))
    fig.update_yaxes(title_text="fraction of tokens", range=[-0.02, 1.02], col=1)
    return log_x_toggle(fig)


def _model_figure(models: pd.DataFrame) -> go.Figure:
    components = [c for c in COMPONENT_TITLES if c in set(models["component"].unique())]
    fig = make_subplots(
        rows=len(components), cols=len(METRICS), shared_xaxes=True, shared_yaxes=True,
        subplot_titles=[f"{COMPONENT_TITLES[c]}: {METRIC_TITLES[m]}" for c in components for m in METRICS],
    )  # fmt: skip
    names = sorted(models["model"].unique())
    palette = plotly.colors.qualitative.Plotly
    for r, component in enumerate(components, start=1):
        for c, metric in enumerate(METRICS, start=1):
            for i, name in enumerate(names):
                trace = models[(models["model"] == name) & (models["component"] == component)].sort_values("step")
                fig.add_trace(
                    go.Scatter(
                        x=trace["step"], y=trace[metric], mode="lines+markers", name=name, legendgroup=name,
                        showlegend=r == 1 and c == 1, line=dict(color=palette[i % len(palette)]),
                        marker=dict(size=4),
                    ),
                    row=r, col=c,
                )  # fmt: skip
    fig.update_layout(
        title="Mean over blocks: SVD direction strings vs each model's final checkpoint",
        height=280 * len(components) + 80, legend_title="model",
    )  # fmt: skip
    fig.update_xaxes(title_text="training step", row=len(components))
    fig.update_yaxes(title_text="fraction of tokens", range=[-0.02, 1.02], col=1)
    return log_x_toggle(fig)


def _browser_notes(arrays: pd.DataFrame, scalars: pd.DataFrame) -> list[str]:
    """circuitsvis views of one layer of one model (the first with token text): MLP and OV directions, drift.
    The checkpoints are chosen from every step of the model's scalars (`browser_steps`); `arrays` need hold
    only those."""
    with_text = sorted(arrays.loc[arrays["name"] == "top_tokens", "model"].unique())
    model = (with_text or sorted(arrays["model"].unique()))[0]
    mine = arrays[arrays["model"] == model]
    layers = sorted(int(v) for v in mine["layer"].dropna().unique())
    if not layers:
        return []
    layer = layers[BROWSER_LAYER]
    swept = scalars.loc[scalars["model"] == model, "step"]
    middle, final, drift_steps = browser_steps(swept if len(swept) else mine["step"])
    views = []
    mlp = stored_strings(mine, model, steps=sorted({middle, final}), component=["W_in", "W_out"], layer=layer)
    if not mlp.empty:
        views.append(directions_view(mlp))
    ov = stored_strings(mine, model, steps=final, component="OV", layer=layer)
    if not ov.empty:
        views.append(directions_view(ov))
    drift = stored_strings(mine, model, steps=drift_steps, component="W_out", layer=layer)
    if not drift.empty:
        views.append(drift_view(drift, max_directions=DRIFT_DIRECTIONS, max_steps=DRIFT_STEPS))
    if not views:
        return []
    heading = (
        f"<h3>Token browser: {html.escape(model)}, block {layer}</h3><p>Pick the checkpoint and scale under "
        "<i>Sample</i>, the matrix or direction under the next drop-down; the last view puts one direction "
        "at several checkpoints side by side, to watch it form and drift. Tokens that are not printable text "
        "are written as &lt;0xNN&gt; byte escapes.</p>"
    )
    return [heading + offline_html(*views)]
