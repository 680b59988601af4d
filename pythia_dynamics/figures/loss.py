"""The evaluation loss over training, one line per model."""

from __future__ import annotations

import html
from pathlib import PurePath

import plotly.graph_objects as go

from pythia_dynamics.figures.sections import Section, SectionInputs, log_x_toggle, section


_ORIGINS = {
    "suite-heldout": "the suite's held-out text",
    "text-file": "the text file",
    "pile-sample": "a Pile sample",
    "offline-fallback-stdlib": "held-out Python standard-library text",
    "token-ids": "token ids given by the user",
}


def describe_eval_batch(recorded: dict) -> str:
    """A sweep's recorded evaluation batch, for a person: sizes and where the text came from, no machine paths."""
    origin = recorded.get("origin", {})
    kind = origin.get("kind", "unknown")
    n_sequences, seq_len = recorded.get("shape") or (len(recorded.get("tokens", [])), 0)
    where = _ORIGINS.get(kind, kind)
    name = origin.get("path") or origin.get("file")
    if name:
        where += f" ({PurePath(str(name)).name})"
    if origin.get("repo"):
        where += f" from {origin['repo']}"
    if kind == "offline-fallback-stdlib":
        where += f", as the Pile sample could not be fetched ({origin.get('reason', 'unknown reason')})"
    if "seed" not in origin:
        return f"{n_sequences} sequences × {seq_len} tokens: {where}"
    pool = f"{origin['n_text_tokens']:,} tokens of " if "n_text_tokens" in origin else ""
    return f"{n_sequences} sequences × {seq_len} tokens at random starts (seed {origin['seed']}) in {pool}{where}"


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
        f"<li><b>{html.escape(model)}</b>: {html.escape(describe_eval_batch(meta['eval_batch']))}</li>"
        for model, meta in inputs.source_meta.items()
        if meta.get("eval_batch")
    ]
    return Section(
        "Evaluation loss",
        intro="Every checkpoint sees the same evaluation batch; where it came from:",
        figures=[log_x_toggle(fig)],
        notes=[f"<ul>{''.join(batches)}</ul>"],
    )
