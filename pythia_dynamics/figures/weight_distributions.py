"""Weight distributions over training: animated histograms and QQ plots, and the fitted shape per block.

Per model and matrix (W_QKV, W_O, W_in, W_out, W_E, W_U), one figure with a step slider and three
panels: the histogram as a density (log y, on the fixed symmetric-log bins stored with it), the QQ
plot against the fitted Gaussian and the QQ plot of |w|'s tail against the fitted power law
(log-log). Then, per model, Student-t ν, generalised-normal β, excess kurtosis and the best family
(by AIC) over training for every fitted matrix, one colour per block. Definitions are in
`pythia_dynamics.analyses.weight_distributions` and `pythia_dynamics.fits`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pythia_dynamics.figures.sections import Section, SectionInputs, animation_steps, line_mode, log_x_toggle, section
from pythia_dynamics.fits import FAMILIES

__all__ = ["DRAWN_ARRAYS", "MAX_FRAMES", "animated_reads", "frame_steps", "weight_distributions_section"]

ANIMATED_COMPONENTS = ["W_QKV", "W_O", "W_gate", "W_in", "W_out", "W_E", "W_U"]
SUMMARY_COMPONENTS = ["W_QKV", "W_Q", "W_K", "W_V", "W_O", "W_gate", "W_in", "W_out", "W_E", "W_U"]
# stat -> (figure title, y-axis title, y-axis type)
SUMMARY_STATS = {
    "student_t_nu": ("Student-t ν of each matrix (small: heavy tails; the cap 1000: Gaussian)", "ν", "log"),
    "gennorm_beta": ("Generalised-normal β of each matrix (2 Gaussian, 1 Laplace)", "β", "linear"),
    "excess_kurtosis": ("Excess kurtosis of each matrix (0 for a Gaussian), over all entries", "excess kurtosis", "linear"),
    "best_family_index": ("Best-fitting family by AIC (blocks drawn slightly apart)", "family", "linear"),
}  # fmt: skip
# Every frame repeats all its traces; beyond this many checkpoints a figure animates a log-spaced subset.
MAX_FRAMES = 32
# Lines x frames per animated figure (each frame holds a histogram and two QQ lines per block): a model of
# 24 blocks animates 10 checkpoints (log-spaced, the title says so), 4 blocks every one of up to MAX_FRAMES.
MAX_LINE_FRAMES = 240
DRAWN_ARRAYS = ["histogram", "histogram_edges", "qq_gaussian", "qq_powerlaw"]  # the arrays the animations draw
_MODEL_LEVEL_COLOURS = {"W_E": "black", "W_U": "grey"}


def frame_steps(all_steps, n_layers: int) -> list[int]:
    """The checkpoints an animation of `n_layers` blocks shows of a model swept at `all_steps`: all of them up to
    the frame budget (MAX_FRAMES, and MAX_LINE_FRAMES lines in all), else that many log-spaced."""
    return animation_steps(all_steps, max(2, min(MAX_FRAMES, MAX_LINE_FRAMES // max(n_layers, 1))))


def animated_reads(components: list[str]):
    """The section's array reads (`section(arrays=...)`) for animations of `components`: per model and
    component, the drawn arrays at the checkpoints its slider shows (`frame_steps`), judged from the section's
    scalars (the model's steps, the component's blocks), so that a 154-checkpoint store is read at 10 of them."""

    def reads(scalars: pd.DataFrame) -> list[dict]:
        out = []
        for model, rows in scalars.groupby("model", sort=True):
            all_steps = rows["step"].unique()
            for component in components:
                blocks = rows.loc[rows["component"] == component, "layer"]
                if len(blocks):
                    steps = frame_steps(all_steps, blocks.nunique(dropna=False))
                    out.append(dict(model=[model], name=DRAWN_ARRAYS, component=[component], steps=steps))
        return out

    return reads


@section("weight_distributions", arrays=animated_reads(ANIMATED_COMPONENTS))
def weight_distributions_section(inputs: SectionInputs) -> Section:
    figures, notes = distribution_figures(inputs, ANIMATED_COMPONENTS, SUMMARY_COMPONENTS)
    return Section(
        "Weight distributions",
        intro=(
            "How the distribution of each weight matrix's entries changes shape over training. Histograms count "
            "every entry on the same symmetric-log bins at every checkpoint (about 0.0002 wide near 0, 7.7% of |w| "
            "wide beyond 0.02, out to ±10) and show density per unit weight on a log scale. Fits (Gaussian, "
            "logistic, Student-t, generalised normal, and a Clauset power law for the tail of |w|) use at most "
            "50,000 entries per matrix, the same positions at every checkpoint. AIC can prefer Student-t or "
            "generalised normal on Gaussian entries by chance (about one matrix in five at initialisation); the "
            "store also holds the BIC choice (<code>best_family_bic_index</code>), which does not. Biases and "
            "layer norms are not fitted (see weight norms); W_Q, W_K and W_V, the parts of W_QKV, appear only in "
            "the per-block figures."
        ),
        figures=figures,
        notes=notes,
    )


def distribution_figures(inputs: SectionInputs, animated: list[str], summarised: list[str], value: str = "weight value w"):
    """Animated histogram/QQ figures for `animated` components and per-block ν/β/kurtosis/family curves
    for `summarised` ones, from `DistributionSummary` records (weights, activations or gradients)."""
    figures, notes = [], []
    for model in sorted(set(inputs.scalars["model"].unique()) | set(inputs.arrays["model"].unique())):
        arrays = inputs.arrays[inputs.arrays["model"] == model]
        scalars = inputs.scalars[inputs.scalars["model"] == model]
        # Every checkpoint swept (the scalars: the report reads the arrays of the animated ones only).
        all_steps = sorted({int(s) for s in arrays["step"].unique()} | {int(s) for s in scalars["step"].unique()})
        steps = animation_steps(all_steps, MAX_FRAMES)
        if len(steps) < len(all_steps):
            notes.append(f"<p>{model}: the sliders show {len(steps)} of {len(all_steps)} checkpoints, evenly spaced "
                         "in log(1 + step); the store holds every one.</p>")  # fmt: skip
        for component in animated:
            fig = _distribution_figure(model, component, arrays[arrays["component"] == component], all_steps, value)
            if fig is not None:
                figures.append(fig)
        figures += [_summary_figure(model, stat, scalars, summarised) for stat in SUMMARY_STATS if stat in set(scalars["stat"].unique())]
    return figures, notes


def _layer(value) -> int | None:
    return None if pd.isna(value) else int(value)


def _colours(layers) -> dict[int, str]:
    layers = sorted(layers)
    palette = plotly.colors.sample_colorscale("Viridis", [i / max(len(layers) - 1, 1) for i in range(len(layers))])
    return dict(zip(layers, palette, strict=True))


def _label(component: str, layer: int | None) -> str:
    return component if layer is None else f"block {layer}"


def _density(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step-line points (left edges + the last edge) of counts / (total * width); empty bins are gaps."""
    total = counts.sum()
    density = counts / (max(total, 1) * np.diff(edges))
    density = np.where(counts > 0, density, np.nan)
    return edges, np.append(density, density[-1])


def _occupied_extent(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[left edge of the first occupied bin, right edge of the last] of a step line from `_density`."""
    occupied = np.flatnonzero(np.isfinite(y[:-1]))
    return np.array([x[occupied[0]], x[occupied[-1] + 1]]) if occupied.size else np.array([])


_EMPTY = (np.array([]), np.array([]))
_PANELS = ("histogram", "qq_gaussian", "qq_powerlaw")


def _panels(arrays: dict, step: int, layer: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(x, y) of each panel's line for one layer at one step; empty where the store has nothing."""
    counts, edges = arrays.get((step, layer, "histogram")), arrays.get((step, layer, "histogram_edges"))
    out = {"histogram": _density(counts, edges) if counts is not None and edges is not None else _EMPTY}
    for name in ("qq_gaussian", "qq_powerlaw"):
        qq = arrays.get((step, layer, name))
        out[name] = (qq[:, 1], qq[:, 2]) if qq is not None else _EMPTY  # model quantile, sample quantile
    return out


def _distribution_figure(model: str, component: str, rows: pd.DataFrame, all_steps: list[int], value: str) -> go.Figure | None:
    rows = rows[rows["name"].isin(DRAWN_ARRAYS)]
    if rows.empty:
        return None
    arrays = {(int(r.step), _layer(r.layer), r.name): np.asarray(r.values, dtype=np.float64).reshape(tuple(r.shape))
              for r in rows.itertuples()}  # fmt: skip
    layers = sorted({k[1] for k in arrays}, key=lambda v: -1 if v is None else v)
    shown = animation_steps(all_steps, MAX_FRAMES)
    steps = frame_steps(all_steps, len(layers))
    colours = _colours([v for v in layers if v is not None])
    data = {(step, layer): _panels(arrays, step, layer) for step in steps for layer in layers}

    # Fixed axes across frames, so the animation shows the distribution move rather than the axes.
    lines = {name: [d[name] for d in data.values()] for name in _PANELS}
    hist_x = np.concatenate([_occupied_extent(*xy) for xy in lines["histogram"]] + [np.array([])])
    hist_y = _finite(np.concatenate([y for _, y in lines["histogram"]] + [np.array([])]))
    qq_g = _finite(np.concatenate([np.r_[x, y] for x, y in lines["qq_gaussian"]] + [np.array([])]))
    qq_p = _finite(np.concatenate([np.r_[x, y] for x, y in lines["qq_powerlaw"]] + [np.array([])]))
    qq_p = qq_p[qq_p > 0]

    fig = make_subplots(
        rows=1, cols=3, horizontal_spacing=0.08,
        subplot_titles=["histogram (density, log scale)", "QQ vs fitted Gaussian", "QQ of the |w| tail vs fitted power law"],
    )  # fmt: skip
    for col, values in ((2, qq_g), (3, qq_p)):  # y = x references, outside the animated traces
        if values.size:
            lo, hi = values.min(), values.max()
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(color="lightgrey", dash="dash"),
                                     name="y = x", showlegend=col == 2, hoverinfo="skip"), row=1, col=col)  # fmt: skip
    n_static = len(fig.data)

    def traces(step: int, validate: bool = True) -> list[go.Scatter]:
        # Frames hold thousands of traces with the properties of the figure's own (validated) ones: plotly's
        # validation of each costs more than the rest of the report's figures together at Pythia's size.
        out = []
        for layer in layers:
            colour = _MODEL_LEVEL_COLOURS.get(component, "black") if layer is None else colours[layer]
            label = _label(component, layer)
            panels = data[(step, layer)]
            hist = _trim(*panels["histogram"], hist_x)
            common = dict(legendgroup=label, line=dict(color=colour), marker=dict(color=colour, size=4))
            out += [
                go.Scatter(x=hist[0], y=hist[1], mode="lines", line_shape="hv", name=label, showlegend=True,
                           xaxis="x", yaxis="y", _validate=validate, **common),
                go.Scatter(x=_f32(panels["qq_gaussian"][0]), y=_f32(panels["qq_gaussian"][1]), mode="markers+lines",
                           name=label, showlegend=False, xaxis="x2", yaxis="y2", _validate=validate, **common),
                go.Scatter(x=_f32(panels["qq_powerlaw"][0]), y=_f32(panels["qq_powerlaw"][1]), mode="markers+lines",
                           name=label, showlegend=False, xaxis="x3", yaxis="y3", _validate=validate, **common),
            ]  # fmt: skip
        return out

    fig.add_traces(traces(steps[-1]))
    animated = list(range(n_static, len(fig.data)))
    # Said in the figure when its many blocks cut the slider below the section's (whose note says so).
    subset = f" (slider: {len(steps)} of {len(all_steps)} checkpoints, log-spaced)" if len(steps) < len(shown) else ""
    title = lambda s: f"{model}: {component} entries at training step {s}{subset}"  # noqa: E731
    frames = [traces(s, validate=False) for s in steps]
    _drop_fixed_x(frames, fig.data[n_static:])
    fig.frames = [go.Frame(data=data, traces=animated, name=str(s), layout=dict(title_text=title(s)), _validate=False)
                  for s, data in zip(steps, frames)]  # fmt: skip
    fig.update_layout(
        title_text=title(steps[-1]), height=480, legend_title="block",
        sliders=[dict(
            active=len(steps) - 1, currentvalue=dict(prefix="training step "), pad=dict(t=50),
            steps=[dict(label=str(s), method="animate",
                        args=[[str(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))])
                   for s in steps],
        )],
    )  # fmt: skip
    if hist_x.size:
        fig.update_xaxes(range=[hist_x.min(), hist_x.max()], row=1, col=1)
    if hist_y.size:
        fig.update_yaxes(type="log", range=[np.log10(hist_y.min()) - 0.2, np.log10(hist_y.max()) + 0.2], row=1, col=1)
    if qq_g.size:
        pad = 0.05 * (qq_g.max() - qq_g.min())
        fig.update_xaxes(range=[qq_g.min() - pad, qq_g.max() + pad], row=1, col=2)
        fig.update_yaxes(range=[qq_g.min() - pad, qq_g.max() + pad], row=1, col=2)
    if qq_p.size:
        span = [np.log10(qq_p.min()) - 0.05, np.log10(qq_p.max()) + 0.05]
        fig.update_xaxes(type="log", range=span, row=1, col=3)
        fig.update_yaxes(type="log", range=span, row=1, col=3)
    symbol = value.split()[-1]
    fig.update_xaxes(title_text=value, row=1, col=1)
    fig.update_yaxes(title_text=f"density (per unit {symbol})", row=1, col=1)
    fig.update_xaxes(title_text=f"fitted Gaussian quantile ({symbol})", row=1, col=2)
    fig.update_yaxes(title_text=f"sample quantile ({symbol})", row=1, col=2)
    fig.update_xaxes(title_text="fitted power-law quantile (|w|)", row=1, col=3)
    fig.update_yaxes(title_text="sample quantile (|w|)", row=1, col=3)
    return fig


def _drop_fixed_x(frames: list[list[go.Scatter]], shown) -> None:
    """Leave x out of the frames' traces whose x is the same in every frame and in the figure (the histograms'
    fixed bins): an animation frame keeps the x it does not set, so the page need not repeat it."""
    for i, trace in enumerate(shown):
        x = np.asarray(trace.x) if trace.x is not None else None
        if x is not None and all(np.array_equal(np.asarray(frame[i].x), x) for frame in frames):
            for frame in frames:
                frame[i].x = None


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _f32(values: np.ndarray) -> np.ndarray:
    # Half the bytes in the page (plotly writes numpy arrays as typed binary); plenty for a plot.
    return np.asarray(values, dtype=np.float32)


def _trim(x: np.ndarray, y: np.ndarray, extent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The step line's points within the range any frame occupies (the rest are empty bins)."""
    if not extent.size:
        return _f32(x), _f32(y)
    keep = (x >= extent.min()) & (x <= extent.max())
    return _f32(x[keep]), _f32(y[keep])


def _summary_figure(model: str, stat: str, scalars: pd.DataFrame, components: list[str]) -> go.Figure:
    title, y_title, y_type = SUMMARY_STATS[stat]
    rows = scalars[scalars["stat"] == stat]
    present = [c for c in components if c in set(rows["component"].unique())]
    n_rows = (len(present) + 2) // 3
    fig = make_subplots(rows=n_rows, cols=3, subplot_titles=present)
    layers = sorted(int(v) for v in rows["layer"].dropna().unique())
    colours = _colours(layers)
    # Categorical y: draw blocks a little apart so that coinciding lines stay visible.
    offset = {layer: 0.25 * (i / max(len(layers) - 1, 1) - 0.5) for i, layer in enumerate(layers)}
    for i, component in enumerate(present):
        for layer, trace in rows[rows["component"] == component].groupby("layer", dropna=False):
            trace = trace.sort_values("step")
            layer = _layer(layer)
            label = _label(component, layer)
            y = trace["value"].to_numpy(dtype=np.float64)
            hover = None
            if stat == "best_family_index":
                hover = [FAMILIES[int(v)] if np.isfinite(v) else "" for v in y]
                y = y + (offset[layer] if layer is not None else 0.0)
            fig.add_trace(
                go.Scatter(
                    x=trace["step"], y=y, mode=line_mode(len(rows)), name=label, legendgroup=label,
                    showlegend=layer is not None and label not in {t.name for t in fig.data},
                    line=dict(color=_MODEL_LEVEL_COLOURS.get(component, "black") if layer is None else colours[layer]),
                    marker=dict(size=4), text=hover,
                    hovertemplate=f"{component} {label}<br>step %{{x}}<br>" + ("%{text}" if hover else f"{y_title} %{{y:.4g}}"),
                ),
                row=i // 3 + 1, col=i % 3 + 1,
            )  # fmt: skip
    fig.update_layout(title=f"{model}: {title}", height=260 * n_rows, legend_title="block")
    fig.update_xaxes(title_text="training step")
    if stat == "best_family_index":
        fig.update_yaxes(tickvals=list(range(len(FAMILIES))), ticktext=list(FAMILIES), range=[-0.5, len(FAMILIES) - 0.5])
    else:
        fig.update_yaxes(type=y_type)
    fig.update_yaxes(title_text=y_title, col=1)
    return log_x_toggle(fig)
