"""Singular-value spectra: rank/σ on log-log axes with a step slider, and the tail exponent and outlier
count over training, one colour per block. Definitions are in `pythia_dynamics.analyses.spectra`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from pythia_dynamics.figures.curves import per_block_curves
from pythia_dynamics.figures.sections import Section, SectionInputs, animation_steps, section, step_slider

__all__ = ["MAX_FRAMES", "MAX_RANKS", "drawn_arrays", "drawn_ranks", "spectra_section"]

# A slider frame holds every trace again; beyond this many checkpoints a figure shows a log-spaced subset.
MAX_FRAMES = 16
# Ranks drawn per spectrum: a longer one (d_model 2048 at Pythia-1.4B) is drawn at this many ranks evenly
# spaced in log(rank), the first and last included: on log-log axes the line looks the same, at a tenth of the page.
MAX_RANKS = 200
# One spectrum figure per entry: the whole matrices the study plotted (W_O whole = "attention dense").
SPECTRUM_FIGURES = [("W_QKV",), ("W_O",), ("W_gate",), ("W_in",), ("W_out",), ("W_E", "W_U")]
TREND_COMPONENTS = ["W_QKV", "W_O", "W_gate", "W_in", "W_out", "W_E", "W_U"]
TREND_STATS = {  # stat: (figure title, y axis title)
    "powerlaw_alpha": ("power-law exponent α of the eigenvalue density's tail over training", "α"),
    "n_outlier_singular_values": ("singular values above the Marchenko–Pastur edge over training", "count"),
    "stable_rank": ("stable rank ‖W‖_F² / ‖W‖₂² over training", "stable rank"),
}
_MODEL_LEVEL_COLOURS = {"W_E": "black", "W_U": "grey"}


def _block_colours(layers) -> dict[int, str]:
    layers = sorted(layers)
    palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
    return dict(zip(layers, palette))


def _trace_label(component: str, layer) -> str:
    return component if pd.isna(layer) else f"block {int(layer)}"


def drawn_ranks(n: int) -> np.ndarray:
    """The ranks (1-based) drawn of a spectrum of `n` singular values: all of them up to MAX_RANKS, else
    MAX_RANKS or fewer evenly spaced in log(rank), 1 and n included."""
    if n <= MAX_RANKS:
        return np.arange(1, n + 1)
    return np.unique(np.rint(np.geomspace(1, n, MAX_RANKS)).astype(np.int64))


def _spectrum_figure(model: str, components: tuple[str, ...], arrays: pd.DataFrame, edges: pd.DataFrame) -> go.Figure | None:
    rows = arrays[arrays["component"].isin(components)]
    if rows.empty:
        return None
    keys = sorted({(c, l) for c, l in zip(rows["component"], rows["layer"])},
                  key=lambda k: (components.index(k[0]), -1 if pd.isna(k[1]) else int(k[1])))  # fmt: skip
    colours = _block_colours({int(l) for _, l in keys if not pd.isna(l)})
    by_key = {(r.step, r.component, None if pd.isna(r.layer) else int(r.layer)): r.values for r in rows.itertuples()}
    edge_of = {(r.step, r.component, None if pd.isna(r.layer) else int(r.layer)): r.value for r in edges.itertuples()}
    frames = {}
    for step in animation_steps(rows["step"], MAX_FRAMES):
        traces = []
        for component, layer in keys:
            layer = None if pd.isna(layer) else int(layer)
            sigma = np.asarray(by_key.get((step, component, layer), []), dtype=np.float32)
            rank = drawn_ranks(sigma.size)
            n_ranks = sigma.size
            sigma = sigma[rank - 1]
            label = _trace_label(component, layer) if len(components) == 1 or layer is None else f"{component} {layer}"
            colour = colours[layer] if layer is not None else _MODEL_LEVEL_COLOURS.get(component, "black")
            edge = edge_of.get((step, component, layer), np.nan)
            traces += [
                go.Scatter(x=rank, y=sigma, mode="lines", name=label, legendgroup=label, line=dict(color=colour),
                           hovertemplate="rank %{x}<br>σ = %{y:.4g}<extra>" + label + "</extra>"),
                go.Scatter(x=[1, max(n_ranks, 1)], y=[edge, edge], mode="lines", name=f"{label}: MP edge",
                           legendgroup=label, showlegend=False, line=dict(color=colour, dash="dash", width=1),
                           hovertemplate="Marchenko–Pastur edge %{y:.4g}<extra>" + label + "</extra>"),
            ]  # fmt: skip
        frames[step] = traces
    fig = go.Figure()
    what = " and ".join(components)
    step_slider(fig, frames, title_of=lambda s: f"{model}: singular values of {what} at step {s} (dashed: MP bulk edge)")
    fig.update_xaxes(type="log", title_text="rank i (1 = largest singular value)")
    fig.update_yaxes(type="log", title_text="singular value σ_i")
    fig.update_layout(legend_title="block" if len(components) == 1 else "matrix", height=480)
    return fig


def drawn_arrays(scalars: pd.DataFrame) -> list[dict]:
    """`Store.arrays` filters of what this section draws: the whole matrices' singular values (no per-head
    spectra) of each model at the checkpoints its sliders show (`animation_steps` of the model's steps)."""
    return [dict(model=[model], name=["singular_values"], head=[None], steps=animation_steps(rows["step"].unique(), MAX_FRAMES))
            for model, rows in scalars.groupby("model", sort=True)]  # fmt: skip


@section("spectra", arrays=drawn_arrays)
def spectra_section(inputs: SectionInputs) -> Section:
    figures, notes = [], []
    spectra = inputs.arrays[(inputs.arrays["name"] == "singular_values") & inputs.arrays["head"].isna()]
    edges = inputs.scalars[(inputs.scalars["stat"] == "mp_edge") & inputs.scalars["head"].isna()]
    whole = inputs.scalars[inputs.scalars["head"].isna()]  # per-head rows share a layer: keep them out of the curves
    for model in sorted(set(inputs.scalars["model"].unique()) | set(spectra["model"].unique())):
        model_spectra, model_edges = spectra[spectra["model"] == model], edges[edges["model"] == model]
        for components in SPECTRUM_FIGURES:
            fig = _spectrum_figure(model, components, model_spectra, model_edges)
            if fig is not None:
                figures.append(fig)
        # Counted from the scalars: the report reads the arrays of the shown checkpoints only.
        n_steps = max(spectra.loc[spectra["model"] == model, "step"].nunique(),
                      inputs.scalars.loc[inputs.scalars["model"] == model, "step"].nunique())
        if n_steps > MAX_FRAMES:
            notes.append(f"<p>{model}: the spectrum sliders show at most {MAX_FRAMES} of {n_steps} checkpoints, evenly "
                         "spaced in log(1 + step); the store holds all of them.</p>")  # fmt: skip
    longest = spectra["shape"].map(lambda s: int(s[0])).max() if len(spectra) else 0
    if longest > MAX_RANKS:
        notes.append(f"<p>Spectra longer than {MAX_RANKS} singular values (up to {longest} here) are drawn at "
                     f"{MAX_RANKS} ranks evenly spaced in log(rank), the first and last included; the store holds "
                     "every singular value.</p>")  # fmt: skip
    for stat, (title, y_title) in TREND_STATS.items():
        figures += per_block_curves(whole, stat, title=title, y_title=y_title, components=TREND_COMPONENTS)
    return Section(
        "Singular-value spectra",
        intro=(
            "Singular values σ_1 ≥ σ_2 ≥ … of each raw weight matrix against their rank, on log-log axes: a "
            "power law is a straight line, a random (Gaussian) matrix a flat curve that drops near its smallest "
            "values. The dashed line is the Marchenko–Pastur edge s(√N + √M) of a random N × M matrix whose "
            "entry scale s is estimated from the spectrum's median; singular values well above it are "
            "outliers (counted beyond a small finite-size margin). W_O is the whole attention output matrix. "
            "α is WeightWatcher's power-law exponent of the eigenvalue density of WᵀW/N. Per-head spectra and "
            "all statistics are in the store; definitions in docs/spectra.md."
        ),
        figures=figures,
        notes=notes,
    )
