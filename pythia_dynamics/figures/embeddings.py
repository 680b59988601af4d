"""Token embedding structure: the 256 × 256 correlation heatmap with a step slider, and per-token norms
over training. Definitions are in `pythia_dynamics.analyses.embeddings`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section
from pythia_dynamics.figures.sections import animation_steps, step_slider
from pythia_dynamics.store import row_to_numpy

__all__ = ["MAX_HEATMAP_FRAMES", "byte_label", "embeddings_section"]

# Each frame is a 256 × 256 heatmap (~90 kB as int8); a longer run shows a log-spaced subset.
MAX_HEATMAP_FRAMES = 12
NORM_STATS = {"token_norm_mean": "mean", "token_norm_median": "median", "token_norm_max": "max"}
_VECTOR_OF = {"W_E": "embedding W_E[t]", "W_U": "unembedding W_U[:, t]"}


def byte_label(token_id: int) -> str:
    """`id:char` for a token id read as a byte: the character when printable ASCII, else its hex code."""
    char = chr(token_id)
    shown = char if 32 < token_id < 127 else ("␠" if token_id == 32 else f"\\x{token_id:02x}")
    return f"{token_id}:{shown}"


def _token_labels(arrays: pd.DataFrame, n: int) -> tuple[list[str], bool]:
    """(labels for ids 0..n-1, whether they came from the recorded tokenizer strings)."""
    recorded = arrays[arrays["name"] == "token_strings"].sort_values("step")
    if len(recorded):
        names = list(row_to_numpy(recorded.iloc[-1]))
        if len(names) == n:
            return [f"{i}:{name}" for i, name in enumerate(names)], True
    return [byte_label(i) for i in range(n)], False


def _correlation_figure(model: str, component: str, rows: pd.DataFrame, labels: list[str]) -> go.Figure:
    frames = {}
    by_step = {int(r.step): r for _, r in rows.iterrows()}
    for step in animation_steps(by_step, MAX_HEATMAP_FRAMES):
        correlation = row_to_numpy(by_step[step])
        # Percent as int8 keeps the page small (plotly ships typed arrays); 0.01 is finer than the eye sees.
        percent = np.nan_to_num(np.rint(correlation * 100), nan=0).astype(np.int8)
        frames[step] = [
            go.Heatmap(z=percent, x=labels, y=labels, zmin=-100, zmax=100, colorscale="RdBu", reversescale=True,
                       colorbar=dict(title="Pearson r", tickvals=[-100, -50, 0, 50, 100],
                                     ticktext=["-1", "-0.5", "0", "0.5", "1"]),
                       hovertemplate="%{y} vs %{x}<br>r = %{z}/100<extra></extra>")
        ]  # fmt: skip
    fig = go.Figure()
    vector = _VECTOR_OF.get(component, component)
    what = f"correlation between the first {len(labels)} tokens' {vector}"
    step_slider(fig, frames, title_of=lambda s: f"{model}: {what} at step {s}")
    fig.update_xaxes(title_text="token (id:string)", type="category", tickangle=-90, tickfont=dict(size=7))
    fig.update_yaxes(title_text="token (id:string)", type="category", autorange="reversed", tickfont=dict(size=7))
    fig.update_layout(height=760, width=820)
    return fig


def _norm_figure(model: str, scalars: pd.DataFrame) -> go.Figure | None:
    rows = scalars[scalars["stat"].isin(list(NORM_STATS))]
    components = [c for c in _VECTOR_OF if c in set(rows["component"].unique())]
    if not components:
        return None
    titles = [f"‖{_VECTOR_OF[c]}‖₂ over all tokens t" for c in components]
    fig = make_subplots(rows=1, cols=len(components), subplot_titles=titles)
    colours = {"token_norm_mean": "#1f77b4", "token_norm_median": "#2ca02c", "token_norm_max": "#d62728"}
    for j, component in enumerate(components):
        for stat, label in NORM_STATS.items():
            line = rows[(rows["component"] == component) & (rows["stat"] == stat)].sort_values("step")
            fig.add_trace(
                go.Scatter(x=line["step"], y=line["value"], mode="lines+markers", name=label, legendgroup=label,
                           showlegend=j == 0, line=dict(color=colours[stat])),
                row=1, col=j + 1,
            )  # fmt: skip
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="L2 norm of a token's vector", col=1)
    fig.update_layout(title=f"{model}: per-token norms over training", legend_title="over tokens", height=380)
    return log_x_toggle(fig)


def _byte_norm_figure(model: str, rows: pd.DataFrame, labels: list[str]) -> go.Figure | None:
    rows = rows.sort_values("step")
    if rows.empty:
        return None
    steps = [int(s) for s in rows["step"]]
    norms = np.stack([row_to_numpy(r) for _, r in rows.iterrows()], axis=1).astype(np.float32)  # [token, step]
    fig = go.Figure(
        go.Heatmap(z=norms, x=[str(s) for s in steps], y=labels, colorscale="Viridis", colorbar=dict(title="‖W_E[t]‖₂"),
                   hovertemplate="token %{y}<br>step %{x}<br>norm %{z:.4g}<extra></extra>")
    )  # fmt: skip
    fig.update_xaxes(title_text="training step (one column per checkpoint)", type="category")
    fig.update_yaxes(title_text="token (id:string)", type="category", autorange="reversed", tickfont=dict(size=7))
    fig.update_layout(title=f"{model}: embedding norm ‖W_E[t]‖₂ of each of the first {len(labels)} tokens", height=760)
    return fig


@section("embeddings", arrays=[dict(name=["token_correlation", "token_norms", "token_strings"])])
def embeddings_section(inputs: SectionInputs) -> Section:
    figures, notes = [], []
    arrays = inputs.arrays
    for model in sorted(set(inputs.scalars["model"].unique()) | set(arrays["model"].unique())):
        model_arrays = arrays[(arrays["model"] == model) & arrays["layer"].isna()]
        correlations = model_arrays[model_arrays["name"] == "token_correlation"]
        for component in _VECTOR_OF:
            rows = correlations[correlations["component"] == component]
            if rows.empty:
                continue
            n = int(rows["shape"].iloc[0][0])
            labels, from_tokenizer = _token_labels(model_arrays, n)
            figures.append(_correlation_figure(model, component, rows, labels))
        norm = _norm_figure(model, inputs.scalars[inputs.scalars["model"] == model])
        if norm is not None:
            figures.append(norm)
        byte_norms = model_arrays[(model_arrays["name"] == "token_norms") & (model_arrays["component"] == "W_E")]
        if len(byte_norms):
            labels, from_tokenizer = _token_labels(model_arrays, int(byte_norms["shape"].iloc[0][0]))
            figures.append(_byte_norm_figure(model, byte_norms, labels))
            source = (
                "the tokenizer's own token names (Ġ is a leading space, Ċ a newline)"
                if from_tokenizer
                else "ids read as bytes (id:character, hex when not printable): right for the mini suite, whose ids "
                "0..255 are the bytes in byte order, but not for Pythia, whose first ids are not in byte order"
            )
            notes.append(f"<p>{model}: token labels are {source}.</p>")
        n_steps = correlations["step"].nunique()
        if n_steps > MAX_HEATMAP_FRAMES:
            notes.append(f"<p>{model}: the correlation sliders show at most {MAX_HEATMAP_FRAMES} of {n_steps} checkpoints, "
                         "evenly spaced in log(1 + step); the store holds all of them.</p>")  # fmt: skip
    return Section(
        "Token embeddings",
        intro=(
            "Pearson correlation between the embedding vectors of token ids 0..255 (each vector centred over "
            "d_model), as the source study plotted it, and the same for the unembedding columns; then the "
            "mean, median and max over all tokens of each token vector's L2 norm. The Frobenius norms of "
            "W_E and W_U are in the weight-norms section."
        ),
        figures=figures,
        notes=notes,
    )
