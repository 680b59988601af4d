"""Circuits over training: head-score heatmaps with a step slider, formation tables, in-context learning,
massive activations by block."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from pythia_dynamics.circuits import describe, formation, formation_of_series
from pythia_dynamics.figures.sections import Section, SectionInputs, animation_steps, log_x_toggle, section, step_slider

MAX_FRAMES = 30
FORMATION_ROWS = 12  # the series that changed most; the whole table is `pythia_dynamics.circuits.formation(store)`
_SCORE_TITLES = {
    "induction_score": "induction score (repeated random tokens)",
    "prev_token_score": "previous-token score (repeated random tokens)",
    "duplicate_token_score": "duplicate-token score (repeated random tokens)",
    "sink_share": "attention to the first position (evaluation batch)",
    "attention_entropy": "attention entropy, nats (evaluation batch)",
}


def head_heatmaps(rows: pd.DataFrame, model: str, stat: str) -> go.Figure:
    """Layer x head heatmap of one score, one slider frame per checkpoint (at most MAX_FRAMES)."""
    rows = rows[rows["stat"] == stat]
    n_layers, n_heads = int(rows["layer"].max()) + 1, int(rows["head"].max()) + 1
    lo, hi = float(rows["value"].min()), float(rows["value"].max())
    frames = {}
    for step in animation_steps(rows["step"].unique(), MAX_FRAMES):
        at = rows[rows["step"] == step]
        grid = np.full((n_layers, n_heads), np.nan)
        grid[at["layer"].astype(int), at["head"].astype(int)] = at["value"]
        frames[step] = [go.Heatmap(z=grid, x=list(range(n_heads)), y=list(range(n_layers)), zmin=lo, zmax=hi,
                                   colorscale="Viridis", colorbar_title=stat.replace("_", " "),
                                   hovertemplate="layer %{y} head %{x}: %{z:.3f}<extra></extra>")]  # fmt: skip
    fig = go.Figure()
    fig.update_layout(xaxis_title="head", yaxis_title="layer", xaxis_dtick=1, yaxis_dtick=1, height=220 + 28 * n_layers)
    return step_slider(fig, frames, title_of=lambda s: f"{model}: {_SCORE_TITLES[stat]}, step {s}")


def best_head_curves(rows: pd.DataFrame, model: str, stats: list[str]) -> go.Figure:
    """Each score of the head that ends highest on it, over training."""
    fig = go.Figure()
    for stat in stats:
        series = rows[rows["stat"] == stat]
        last = series[series["step"] == series["step"].max()]
        best = last.loc[last["value"].idxmax()]
        trace = series[(series["layer"] == best["layer"]) & (series["head"] == best["head"])].sort_values("step")
        fig.add_trace(go.Scatter(x=trace["step"], y=trace["value"], mode="lines+markers",
                                 name=f"{stat} (layer {int(best['layer'])} head {int(best['head'])})"))  # fmt: skip
    fig.update_layout(title=f"{model}: the top head of each score over training", xaxis_title="training step", yaxis_title="score")
    return log_x_toggle(fig)


FORMATION_MARK = dict(color="rgba(44, 160, 44, 0.7)", width=1.5, dash="dashdot")
# The scores whose formation is drawn on the loss curve: the head whose score rose most, per model.
LOSS_CURVE_SCORES = ("induction_score", "prev_token_score")


def formation_marks(scalars: pd.DataFrame) -> dict[int, str]:
    """{half-way step: what formed there} for the head whose induction and previous-token scores rose most,
    per model: where the loss curve is marked, so a loss bump can be read against the circuit forming."""
    table = formation(scalars, {"head_scores": LOSS_CURVE_SCORES})
    marks: dict[int, str] = {}
    for (model, _), rows in table[table["change"] > 0].groupby(["model", "stat"], sort=True):
        best = rows.loc[rows["change"].idxmax()]
        if not pd.isna(best["half_step"]):
            text = html.escape(f"{model}: {describe(best)}")
            step = int(best["half_step"])
            marks[step] = f"{marks[step]}<br>{text}" if step in marks else text
    return marks


def formation_note(scalars: pd.DataFrame) -> str:
    table = formation(scalars)
    table = table[table["half_step"].notna()]
    if table.empty:
        return "<p>No score changed over the swept checkpoints.</p>"
    table = table.reindex(table["change"].abs().sort_values(ascending=False).index).head(FORMATION_ROWS)
    lines = "".join(f"<li>{html.escape(r['model'])}: {html.escape(describe(r))}; steepest (on log step) between "
                    f"steps {r['steepest_from']} and {r['steepest_to']}</li>" for _, r in table.iterrows())  # fmt: skip
    shown = table[["model", "component", "layer", "head", "stat", "initial", "final", "half_step_before", "half_step",
                   "steepest_from", "steepest_to"]]  # fmt: skip
    return (f"<p>When it formed (the {len(table)} series that changed most; half-way = half-way from the first to the "
            f"last checkpoint's value):</p><ul>{lines}</ul>" + shown.to_html(index=False, border=0, classes="summary",
                                                                              float_format="%.3g"))  # fmt: skip


@section("head_scores")
def head_scores_section(inputs: SectionInputs) -> Section:
    figures = []
    scores = inputs.scalars[inputs.scalars["component"] == "attn"]
    for model, rows in scores.groupby("model"):
        stats = [s for s in _SCORE_TITLES if s in set(rows["stat"].unique())]
        figures.append(best_head_curves(rows, model, stats[:4]))
        figures += [head_heatmaps(rows, model, stat) for stat in stats]
    return Section(
        "Attention heads: induction, previous-token, duplicate-token, sinks",
        intro=(
            "Per head: scores on a fixed batch of repeated random token sequences <code>[BOS] r r</code> (induction: "
            "attention from each token of the second copy to the token after its first occurrence; previous-token; "
            "duplicate-token) and on the evaluation batch (attention to the first position, attention entropy). "
            "Definitions: docs/circuits.md. Drag the slider to move through training."
        ),
        figures=figures,
        notes=[formation_note(inputs.scalars)],
    )


@section("in_context_learning", arrays=[dict(name=["loss_by_position"])])
def in_context_learning_section(inputs: SectionInputs) -> Section:
    figures = []
    s = inputs.scalars
    for model, rows in s.groupby("model"):
        fig = go.Figure()
        for stat, label in [("repeat_first_copy_loss", "repeated tokens, first copy"),
                            ("repeat_second_copy_loss", "repeated tokens, second copy"),
                            ("early_loss", "evaluation batch, early window"), ("late_loss", "evaluation batch, late window")]:  # fmt: skip
            trace = rows[rows["stat"] == stat].sort_values("step")
            fig.add_trace(go.Scatter(x=trace["step"], y=trace["value"], mode="lines+markers", name=label))
        icl = rows[rows["stat"] == "icl_score"].sort_values("step")
        fig.add_trace(go.Scatter(x=icl["step"], y=icl["value"], mode="lines", name="ICL score (late - early)", yaxis="y2"))
        drop = rows[rows["stat"] == "repeat_loss_drop"]
        formed = formation_of_series(drop["step"], drop["value"])
        if formed["change"] > 0 and not np.isnan(formed["half_step_before"]):
            # Where copying from context formed: the drop crossed half-way between these checkpoints.
            fig.add_vrect(x0=formed["half_step_before"], x1=formed["half_step"], fillcolor="orange", opacity=0.2, line_width=0,
                          annotation_text="second-copy loss drop half formed", annotation_position="top left")  # fmt: skip
        fig.update_layout(title=f"{model}: loss on the second copy of repeated tokens, and late vs early in context",
                          xaxis_title="training step", yaxis_title="loss (nats per token)",
                          yaxis2=dict(title="ICL score (nats)", overlaying="y", side="right"))  # fmt: skip
        figures.append(log_x_toggle(fig))
        by_position = inputs.arrays[(inputs.arrays["model"] == model) & (inputs.arrays["name"] == "loss_by_position")]
        if len(by_position):
            steps = animation_steps(by_position["step"].unique(), 8)
            palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(steps) - 1, 1) for i in range(len(steps))])
            curve = go.Figure()
            for colour, step in zip(palette, steps):
                values = by_position[by_position["step"] == step]["values"].iloc[0]
                curve.add_trace(go.Scatter(x=np.arange(1, len(values) + 1), y=values, mode="lines",
                                           name=f"step {step}", line=dict(color=colour)))  # fmt: skip
            curve.update_layout(title=f"{model}: loss by position in the context", xaxis_title="token position",
                                yaxis_title="loss (nats)", legend_title="checkpoint")  # fmt: skip
            figures.append(curve)
    return Section(
        "In-context learning",
        intro=(
            "Loss on the second copy of repeated random sequences falls below the first copy's once the model "
            "copies from context (induction); the shaded band is where that drop crossed half-way to its final size. The in-context-learning score is the evaluation batch's loss late in "
            "the context minus early (Olsson et al.'s 500th vs 50th of 512 tokens, scaled to the context; "
            "positions in the store as <code>icl_early_position</code>, <code>icl_late_position</code>)."
        ),
        figures=figures,
    )


@section("massive_activations")
def massive_activations_section(inputs: SectionInputs) -> Section:
    figures, notes = [], []
    s = inputs.scalars
    for model, rows in s.groupby("model"):
        for stat, y_title, log_y in [("top1_abs", "largest |activation|", False),
                                     ("top1_ratio", "largest |activation| / median |activation|", True)]:  # fmt: skip
            fig = go.Figure()
            groups = rows[rows["stat"] == stat].groupby(["component", "layer"])
            # In depth order: the embeddings (block 0's input), then each block's output.
            for (component, layer), trace in sorted(groups, key=lambda g: (g[0][0] != "hook_resid_pre", g[0][1])):
                label = "embeddings" if component == "hook_resid_pre" else f"block {int(layer)}"
                trace = trace.sort_values("step")
                fig.add_trace(go.Scatter(x=trace["step"], y=trace["value"], mode="lines+markers", name=label))
            fig.update_layout(title=f"{model}: {y_title} by block", xaxis_title="training step", yaxis_title=y_title,
                              yaxis_type="log" if log_y else "linear", legend_title="residual stream after")  # fmt: skip
            figures.append(log_x_toggle(fig))
        last = rows[rows["step"] == rows["step"].max()].pivot_table(index=["component", "layer"], columns="stat", values="value")
        table = last.reset_index()[["component", "layer", "top1_abs", "top1_ratio", "top1_position", "top1_dim", "top1_on_first_token"]]
        notes.append(f"<p>{html.escape(model)}, step {rows['step'].max()}: the largest entry per block</p>"
                     + table.to_html(index=False, border=0, classes="summary", float_format="%.4g"))  # fmt: skip
    notes.append(formation_note(s))
    return Section(
        "Massive activations",
        intro=(
            "The largest residual-stream entries (Sun et al., 2024): per block, the largest |activation| over the "
            "evaluation batch, its ratio to the median |activation|, its position and dimension. Massive activations "
            "sit on the first token at a fixed dimension and reach thousands of times the median."
        ),
        figures=figures,
        notes=notes,
    )
