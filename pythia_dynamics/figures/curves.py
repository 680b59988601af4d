"""Curves over training with one colour per block and one panel per component (shared by sections)."""

from __future__ import annotations

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.figures.sections import log_x_toggle

__all__ = ["HEADLINE_COMPONENTS", "per_block_curves"]

# The study's components first; everything else stays in the store.
HEADLINE_COMPONENTS = ["W_QKV", "W_O", "W_gate", "W_in", "W_out", "b_in", "b_out", "ln1.w", "ln2.w",
                       "W_E", "W_U", "ln_final.w", "ln_final.b"]  # fmt: skip


def per_block_curves(
    scalars: pd.DataFrame, stat: str, *, title: str, y_title: str, components: list[str] = HEADLINE_COMPONENTS
) -> list[go.Figure]:
    """One figure per model: a panel per component, a line per block (black for model-level weights)."""
    figures = []
    for model, rows in scalars[scalars["stat"] == stat].groupby("model"):
        available = set(rows["component"].unique())
        if "W_QKV" in components and "W_QKV" not in available:  # Q, K and V stored apart (LLaMA, OLMo): each
            at = components.index("W_QKV")
            components = [*components[:at], "W_Q", "W_K", "W_V", *components[at + 1 :]]
        present = [c for c in components if c in available]
        if not present:
            continue
        n_rows = (len(present) + 2) // 3
        fig = make_subplots(rows=n_rows, cols=3, subplot_titles=present)
        layers = sorted(int(v) for v in rows["layer"].dropna().unique())
        palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
        colour = dict(zip(layers, palette))
        for i, component in enumerate(present):
            for layer, trace in rows[rows["component"] == component].groupby("layer", dropna=False):
                trace = trace.sort_values("step")
                is_block = bool(trace["layer"].notna().all())
                label = f"block {int(layer)}" if is_block else component
                fig.add_trace(
                    go.Scatter(
                        x=trace["step"], y=trace["value"], mode="lines", name=label, legendgroup=label,
                        showlegend=is_block and i == 0,
                        line=dict(color=colour[int(layer)] if is_block else "black"),
                    ),
                    row=i // 3 + 1, col=i % 3 + 1,
                )  # fmt: skip
        fig.update_layout(title=f"{model}: {title}", height=260 * n_rows, legend_title="block")
        fig.update_xaxes(title_text="training step")
        fig.update_yaxes(title_text=y_title, col=1)
        figures.append(log_x_toggle(fig))
    return figures


def across_models(
    scalars: pd.DataFrame, component: str, stat: str, *, reduce: str, title: str, y_title: str,
    source_meta: dict[str, dict] | None = None,
) -> list[go.Figure]:
    """One line per model of `stat` reduced over blocks ("mean" or "max"), against the fraction of each
    model's training, so runs of different lengths (sizes, seeds, suites of other families, the mini
    suite) share one axis. Where every model's source recorded tokens seen per checkpoint (OLMo, SmolLM,
    Pythia: `source_meta`), a second figure puts them on tokens seen. Empty unless the scalars hold at
    least two models."""
    rows = scalars[(scalars["component"] == component) & (scalars["stat"] == stat)]
    if rows["model"].nunique() < 2:
        return []
    per_model = {model: model_rows.groupby("step")["value"].agg(reduce).sort_index() for model, model_rows in rows.groupby("model")}
    fig = go.Figure()
    for model, per_step in per_model.items():
        fraction = per_step.index / max(per_step.index.max(), 1)
        fig.add_trace(go.Scatter(x=fraction, y=per_step.values, mode="lines", name=model))
    fig.update_layout(title=title, xaxis_title="fraction of training (step / last swept step)",
                      yaxis_title=y_title, legend_title="model")  # fmt: skip
    figures = [fig]
    tokens = tokens_seen(source_meta or {})
    if all(model in tokens and all(step in tokens[model] for step in per_step.index) for model, per_step in per_model.items()):
        by_tokens = go.Figure()
        for model, per_step in per_model.items():
            x = [tokens[model][step] for step in per_step.index]
            by_tokens.add_trace(go.Scatter(x=x, y=per_step.values, mode="lines", name=model))
        by_tokens.update_layout(title=f"{title}, against tokens seen", xaxis_title="tokens seen", xaxis_type="log",
                                yaxis_title=y_title, legend_title="model")  # fmt: skip
        figures.append(by_tokens)
    return figures


def tokens_seen(source_meta: dict[str, dict]) -> dict[str, dict[int, int]]:
    """{model: {step: tokens seen}} for the models whose source recorded them (`metadata.tokens_seen`)."""
    out = {}
    for model, meta in source_meta.items():
        recorded = ((meta or {}).get("metadata") or {}).get("tokens_seen")
        if recorded:
            out[model] = {int(step): int(value) for step, value in recorded.items()}
    return out
