"""circuitsvis views over training: SVD directions, and one head's attention pattern across checkpoints.

Both take the tidy direction tables of `analyses.svd_directions.svd_strings` (a model you hold) or
`svd_agreement.stored_strings` (a results store) and draw circuitsvis's `TopkTokens` table: per
direction (a column), its top-k tokens above (largest first) and its bottom-k tokens below (most
negative last), coloured by value.

- `directions_view`: columns are the directions of one matrix; a drop-down picks the matrix (e.g.
  each OV head of a layer, or W_in / W_out) and another the checkpoint.
- `drift_view`: columns are checkpoints, in step order, for one direction rank picked in a drop-down;
  how a direction forms and drifts over training. The caption maps column numbers to steps
  (TopkTokens numbers its columns and cannot label them).

TopkTokens colours values in [0, 1], so each view offers, as its "Sample" choices, each direction's logits
divided by its largest |logit| (`"relative"`: the top token reads 1.0, colours span the range) and the
logits themselves (`"raw"`). (With a single sample circuitsvis 1.43 shows only one column at a time,
so keep both scales unless there are several checkpoints.)
It picks a column's top/bottom tokens from the values it is given, so tokens outside a direction's
stored lists are given a value between its k-th top and k-th bottom logit, which is where every
other vocabulary token lies; without stored bottom tokens the bottom rows are not meaningful.

- `attention_over_training`: one head's attention pattern on a fixed text at several checkpoints side
  by side (circuitsvis's `attention_heads`, one "head" per checkpoint), from a results store
  (`head_scores` keeps every head's pattern on the first evaluation sequence's first 32 tokens) or
  from patterns you computed (`{step: pattern [query, key]}` and the tokens).

Offline: `View._repr_html_` is circuitsvis's (the CDN when online, the inlined bundle otherwise);
`offline_html(*views)` and `offline_page(*views)` always inline circuitsvis's JavaScript bundle
(about 1.3 MB), once for all the views given, so the HTML works with no network.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from importlib import resources
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import pandas as pd
from circuitsvis.attention import attention_heads
from circuitsvis.topk_tokens import topk_tokens
from circuitsvis.utils.render import RenderedHTML

__all__ = ["View", "attention_over_training", "directions_view", "drift_view", "offline_html", "offline_page",
           "stored_attention"]

Scale = Literal["relative", "raw"]
_MATRIX = ["component", "layer", "head"]


@dataclass
class View:
    rendered: RenderedHTML  # the circuitsvis object
    caption: str = ""  # HTML shown above the table

    def _repr_html_(self) -> str:
        return self.caption + _close_div(self.rendered._repr_html_())

    def offline_html(self) -> str:
        return offline_html(self)


def _matrix_label(component: str, layer, head) -> str:
    where = f"block {int(layer)}"
    return f"{where} {component} head {int(head)}" if not pd.isna(head) else f"{where} {component}"


def _labels(strings: pd.DataFrame) -> pd.Series:
    """Display text per row; a token stored without text shows as #<id>."""
    ids = "#" + strings["token_id"].astype(np.int64).astype(str)
    if "token" not in strings.columns:
        return ids
    return strings["token"].astype(object).where(strings["token"].notna(), ids)


def _column_values(rows: pd.DataFrame, scale: Scale) -> tuple[dict[int, float], float]:
    """{token id: value} for one column (one direction of one matrix at one step), and the fill value."""
    top = rows[rows["side"] == "top"]
    bottom = rows[rows["side"] == "bottom"]
    if top.empty:
        raise ValueError("a direction has no top tokens; pass svd_strings / stored_strings output")
    norm = float(np.abs(rows["logit"]).max()) or 1.0 if scale == "relative" else 1.0
    lowest_top = float(top["logit"].min())
    if bottom.empty:
        fill = lowest_top - abs(lowest_top) * 1e-3 - 1e-9  # just below the top list
    else:
        fill = (lowest_top + float(bottom["logit"].max())) / 2
    values = {int(t): float(v) / norm for t, v in zip(rows["token_id"], rows["logit"])}
    return values, fill / norm


def _activations(
    columns: list[list[tuple[dict[int, float], float]]], token_ids: list[int]
) -> np.ndarray:
    """What TopkTokens wants for one sample: [first dimension, token, column], from (values, fill) per column."""
    index = {t: i for i, t in enumerate(token_ids)}
    acts = np.empty((len(columns), len(token_ids), len(columns[0])), dtype=np.float64)
    for f, row in enumerate(columns):
        for c, (values, fill) in enumerate(row):
            acts[f, :, c] = fill
            for token, value in values.items():
                acts[f, index[token], c] = value
    return acts


def _vocabulary(df: pd.DataFrame) -> tuple[list[int], list[str]]:
    """The token ids shown in a sample and their display text (ids, not text, identify tokens)."""
    first = df.drop_duplicates("token_id").sort_values("token_id")
    return first["token_id"].astype(int).tolist(), first["label"].astype(str).tolist()


def _prepare(strings: pd.DataFrame) -> pd.DataFrame:
    required = {"component", "layer", "head", "direction", "side", "rank", "token_id", "logit"}
    missing = required - set(strings.columns)
    if missing:
        raise ValueError(f"strings is missing columns {sorted(missing)}; pass svd_strings or stored_strings output")
    if strings.empty:
        raise ValueError("strings is empty: nothing to show")
    df = strings.copy()
    if "step" not in df.columns:
        df["step"] = -1  # a model held in a notebook: one unnamed checkpoint
    df["label"] = _labels(df)
    return df


def _check_scales(scales: Sequence[Scale]) -> tuple[Scale, ...]:
    scales = tuple(scales)
    if not scales or any(scale not in get_args(Scale) for scale in scales):
        raise ValueError(f"scales must be a non-empty subset of {get_args(Scale)}, got {scales!r}")
    return scales


def directions_view(
    strings: pd.DataFrame, *, scales: Sequence[Scale] = ("relative", "raw"), max_directions: int | None = None
) -> View:
    """Browse the directions of one or more matrices (e.g. a layer's heads) at one or more checkpoints.

    A "Sample" drop-down picks the checkpoint and the value scale, a "Matrix" drop-down the matrix.
    Matrices shown together must have the same number of directions (all OV heads of a model do; W_in
    and W_out do); `max_directions` keeps the first few.
    """
    scales = _check_scales(scales)
    df = _prepare(strings)
    if max_directions is not None:
        df = df[df["direction"] < max_directions]
    by_matrix = df.groupby(_MATRIX, dropna=False, sort=True)
    matrices = list(by_matrix.groups)
    n_dirs = {_matrix_label(*m): int(g["direction"].nunique()) for m, g in by_matrix}
    if len(set(n_dirs.values())) > 1:
        raise ValueError(
            f"matrices with different numbers of directions cannot share one view: {n_dirs}; "
            "select fewer matrices or pass max_directions"
        )
    steps = sorted(int(s) for s in df["step"].unique())
    k = int(df["rank"].max()) + 1
    tokens, activations, sample_labels = [], [], []
    for step in steps:
        at_step = df[df["step"] == step]
        token_ids, labels_at_step = _vocabulary(at_step)
        for scale in scales:
            columns = []
            for matrix in matrices:
                rows = _select_matrix(at_step, matrix)
                if rows.empty:
                    raise ValueError(f"step {step} lacks {_matrix_label(*matrix)}; every step needs the same matrices")
                columns.append([_column_values(d, scale) for _, d in rows.groupby("direction", sort=True)])
            tokens.append(labels_at_step)
            activations.append(_activations(columns, token_ids))
            sample_labels.append(f"{_step_label(step)}, {_SCALE_WORDS[scale]}")
    labels = [_matrix_label(*m) for m in matrices]
    rendered = topk_tokens(
        tokens=tokens, activations=activations, max_k=k, first_dimension_name="Matrix",
        third_dimension_name="SVD direction", sample_labels=sample_labels, first_dimension_labels=labels,
    )  # fmt: skip
    shown = ", ".join(labels[:4]) + (" …" if len(labels) > 4 else "")
    caption = (
        f"<p>SVD directions of {html.escape(shown)} ({html.escape(', '.join(_step_label(s) for s in steps))}): "
        f"each column is a direction (0 = largest singular value) with its top-{k} tokens above (largest "
        f"first) and its bottom-{k} tokens below (most negative last).</p>"
    )
    return View(rendered, caption)


def drift_view(
    strings: pd.DataFrame,
    *,
    scales: Sequence[Scale] = ("relative", "raw"),
    max_directions: int | None = 10,
    max_steps: int | None = 12,
) -> View:
    """One matrix's directions across checkpoints side by side: columns are steps, a drop-down picks the rank.

    `strings` holds one matrix at several steps (stored_strings for one component/layer/head). At most
    `max_steps` checkpoints are shown, evenly spread over those given, the first and last included.
    """
    scales = _check_scales(scales)
    df = _prepare(strings)
    n_matrices = df.groupby(_MATRIX, dropna=False).ngroups
    if n_matrices != 1:
        raise ValueError(f"drift_view shows one matrix; strings holds {n_matrices} (filter component/layer/head)")
    if max_directions is not None:
        df = df[df["direction"] < max_directions]
    steps = sorted(int(s) for s in df["step"].unique())
    if max_steps is not None and len(steps) > max_steps:
        picks = np.unique(np.round(np.linspace(0, len(steps) - 1, max_steps)).astype(int))
        steps = [steps[i] for i in picks]
        df = df[df["step"].isin(steps)]
    directions = sorted(int(d) for d in df["direction"].unique())
    k = int(df["rank"].max()) + 1
    token_ids, token_labels = _vocabulary(df)
    activations = []
    for scale in scales:
        columns = []
        for direction in directions:
            row = []
            for step in steps:
                rows = df[(df["direction"] == direction) & (df["step"] == step)]
                if rows.empty:
                    raise ValueError(f"direction {direction} is missing at step {step}")
                row.append(_column_values(rows, scale))
            columns.append(row)
        activations.append(_activations(columns, token_ids))
    label = _matrix_label(*df[_MATRIX].iloc[0])
    rendered = topk_tokens(
        tokens=[token_labels] * len(scales), activations=activations, max_k=k,
        first_dimension_name="Direction", third_dimension_name="Checkpoint",
        sample_labels=[f"{label}, {_SCALE_WORDS[scale]}" for scale in scales],
        first_dimension_labels=[f"direction {d}" for d in directions],
    )  # fmt: skip
    mapping = ", ".join(f"{i} = {_step_label(s)}" for i, s in enumerate(steps))
    caption = (
        f"<p>{html.escape(label)}: one direction (pick its rank) at each checkpoint, side by side. "
        f"Checkpoint columns: {html.escape(mapping)}.</p>"
    )
    return View(rendered, caption)


def stored_attention(store, model: str, layer: int, head: int, steps: Sequence[int] | None = None):
    """({step: pattern [query, key]}, tokens) of one head, as `head_scores` stored them (its view text).

    `store`: a `Store` or its path; `steps`: default every step with a `head_scores` result.
    """
    from pythia_dynamics.store import Store, row_to_numpy

    store = store if isinstance(store, Store) else Store(store)
    steps = store.steps(model, "head_scores") if steps is None else list(steps)
    if not steps:
        raise ValueError(f"the store at {store.path} has no head_scores results for {model!r}; sweep with --analyses head_scores")
    arrays = store.arrays(model=model, analysis="head_scores", steps=steps, component="attn")
    patterns, tokens = {}, None
    for step in steps:
        at = arrays[arrays["step"] == step]
        rows = at[(at["name"] == "view_pattern") & (at["layer"] == layer)]
        if rows.empty:
            raise ValueError(f"no stored attention pattern for layer {layer} at step {step} (layers: {sorted(at['layer'].dropna().unique())})")
        pattern = row_to_numpy(rows.iloc[0])
        if not 0 <= head < pattern.shape[0]:
            raise ValueError(f"head {head} out of range: layer {layer} has {pattern.shape[0]} heads")
        patterns[int(step)] = pattern[head]
        tokens = list(at[at["name"] == "view_tokens"]["text"].iloc[0])
    return patterns, tokens


def attention_over_training(
    store_or_patterns, tokens: Sequence[str] | None = None, *, model: str | None = None, layer: int | None = None,
    head: int | None = None, steps: Sequence[int] | None = None, max_steps: int | None = 12,
) -> View:
    """One head's attention pattern at several checkpoints side by side.

    Either a results store (a `Store` or path) with `model`, `layer` and `head` (the patterns
    `head_scores` stored), or a mapping step -> pattern [query, key] with its `tokens`. At most
    `max_steps` checkpoints, evenly spread, first and last included.
    """
    if isinstance(store_or_patterns, dict):
        if tokens is None:
            raise ValueError("pass the tokens the patterns were computed on")
        patterns, label = store_or_patterns, "" if layer is None else f"layer {layer} head {head}"
    else:
        if model is None or layer is None or head is None:
            raise ValueError("reading a store needs model=, layer= and head=")
        patterns, tokens = stored_attention(store_or_patterns, model, layer, head, steps)
        label = f"{model} layer {layer} head {head}"
    chosen = sorted(patterns) if steps is None else [int(s) for s in steps]
    if max_steps is not None and len(chosen) > max_steps:
        picks = np.unique(np.round(np.linspace(0, len(chosen) - 1, max_steps)).astype(int))
        chosen = [chosen[i] for i in picks]
    stacked = np.stack([np.asarray(patterns[s], dtype=np.float64) for s in chosen])
    if stacked.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"patterns of shape {stacked.shape[1:]} do not match {len(tokens)} tokens")
    rendered = attention_heads(attention=stacked, tokens=list(tokens), attention_head_names=[f"step {s}" for s in chosen])
    caption = f"<p>{html.escape(label)}: attention pattern at {len(chosen)} checkpoints (one panel per checkpoint).</p>"
    return View(rendered, caption)


def _select_matrix(df: pd.DataFrame, matrix: tuple) -> pd.DataFrame:
    component, layer, head = matrix
    same_head = df["head"].isna() if pd.isna(head) else (df["head"] == head).fillna(False)
    return df[(df["component"] == component) & (df["layer"] == layer) & same_head]


def _step_label(step) -> str:
    return "this model" if step == -1 else f"step {int(step)}"


_SCALE_WORDS = {"relative": "logit / largest |logit|", "raw": "logits"}


# ---------------------------------------------------------------------------------------------
# Offline HTML


def _bundle() -> str:
    # What circuitsvis inlines when it renders offline (render_local), with the same edit it makes.
    source = resources.files("circuitsvis").joinpath("dist/cdn/iife.js").read_text(encoding="utf-8")
    return source.replace("</script>", "")


_SELF_CLOSED_DIV = re.compile(r'<div id="(circuits-vis-[^"]+)"([^>]*?)\s*/>')


def _close_div(src: str) -> str:
    # circuitsvis writes `<div id=.../>`, which HTML parses as an *open* div: everything after it would
    # end up inside the element React replaces. Close it explicitly.
    return _SELF_CLOSED_DIV.sub(r'<div id="\1"\2></div>', src)


def offline_html(*views: View) -> str:
    """An HTML fragment showing `views` with no network: circuitsvis's bundle inlined once for all of them."""
    bundle = _bundle()
    parts, published = [], False
    for view in views:
        src = _close_div(view.rendered.local_src)
        if bundle in src:  # otherwise (another circuitsvis layout) each view keeps its own copy
            if published:
                src = src.replace(bundle, "", 1)
            else:
                # Module scripts keep their top-level names private: publish the library for later views.
                src = src.replace(bundle, bundle + "\nwindow.CircuitsVis = CircuitsVis;", 1)
                published = True
        parts.append(f'<div class="circuitsvis-view">{view.caption}{src}</div>')
    return "\n".join(parts)


def offline_page(*views: View, title: str = "SVD directions") -> str:
    """A complete HTML page (UTF-8) with `views`, working offline."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body><h1>{html.escape(title)}</h1>\n{offline_html(*views)}\n</body></html>\n"
    )
