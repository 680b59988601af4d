"""The self-contained HTML report: one section per analysis present in the store(s).

Reads stores only. plotly.js is inlined once, so the file opens offline in any browser.
"""

from __future__ import annotations

import html
import itertools
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from pythia_dynamics import __version__
from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.figures.sections import array_reads, derived_reads
from pythia_dynamics.figures.events import events_section, mark_changes, mark_events
from pythia_dynamics.figures.circuits import FORMATION_MARK, LOSS_CURVE_SCORES, formation_marks
from pythia_dynamics.figures.sections import mark_steps, mark_suspect_steps, stored_suspects
from pythia_dynamics.store import ARRAY_COLUMNS, Store, describe_steps
from pythia_dynamics.svd_agreement import prefetch_agreement, shared_agreement

__all__ = ["build_report", "compact_figure", "read_section_inputs"]

log = logging.getLogger(__name__)

# The integrity audit first (later figures mark its suspect checkpoints), then the study's order: loss,
# then weights, then activations and gradients, then SVD directions.
SECTION_ORDER = ["audit", "eval_loss", "weight_norms", "weight_distances", "weight_distributions", "spectra", "embeddings",
                 "residual_outliers", "residual_distributions", "gradients", "svd_directions",
                 "head_scores", "in_context_learning", "massive_activations"]  # fmt: skip

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
nav { background: #f5f5f5; padding: 0.5em 1.5em; border-radius: 6px; }
section { margin-top: 2.5em; border-top: 1px solid #ddd; }
table.summary { border-collapse: collapse; font-size: 0.9em; }
table.summary td, table.summary th { padding: 2px 8px; border-bottom: 1px solid #eee; }
"""


def build_report(stores: Sequence[str | Path], out: str | Path) -> Path:
    """Write `out` (an HTML file) from one or more result stores; returns its path.

    Each section reads only what it draws (its analysis's scalars, and the arrays its section function
    registered), one section at a time, so that a full-size store never sits in memory at once; figure
    data go into the page as typed binary arrays (`compact_figure`). The page draws each figure when it
    scrolls near the screen (`_LAZY_LOADER`; docs/scale.md, "Reports of full-size stores")."""
    # The SVD agreement is drawn by the events section (as series) and by the svd_directions section: computed once.
    with shared_agreement():
        return _build_report([Store(path) for path in stores], Path(out))


def _build_report(opened: list[Store], out: Path) -> Path:
    source_meta = {model: s.source_meta(model) or {} for s in opened for model in s.models()}
    present = {analysis for s in opened for analysis in s.analyses()}
    analyses = [a for a in SECTION_ORDER if a in present] + sorted(present - set(SECTION_ORDER))
    parts, toc = [], []
    if "svd_directions" in present:  # its read of every matrix's token ids overlaps the events section's reads
        prefetch_agreement(opened)
    suspects = _read_suspects(opened) if "audit" in present else {}
    figure_ids = itertools.count()
    events = events_section(opened)  # not an analysis: computed from every scalar series of the stores
    # When the circuits formed, marked on the loss curve: read once, for the eval_loss section's figures.
    formed = _formation_marks(opened) if {"eval_loss", "head_scores"} <= present else {}
    for analysis in analyses:
        inputs = read_section_inputs(opened, analysis, source_meta)
        sec = render_section(analysis, inputs)
        del inputs  # the next section's reads replace this one's
        for fig in sec.figures:
            mark_suspect_steps(fig, suspects)
            if events is not None:
                mark_events(fig, events.marks)
                mark_changes(fig, analysis, events)
            if analysis == "eval_loss":
                mark_steps(fig, formed, FORMATION_MARK, "circuit formed (half-way step)", "formation")
        anchor = f"section-{analysis}"
        toc.append(f'<li><a href="#{anchor}">{html.escape(sec.title)}</a></li>')
        body = [f'<section id="{anchor}"><h2>{html.escape(sec.title)}</h2><p>{sec.intro}</p>']
        body += [_figure_html(fig, f"figure-{next(figure_ids)}") for fig in sec.figures]
        body += sec.notes
        parts.append("\n".join(body) + "</section>")
    if events is not None:
        toc.append(f'<li><a href="#section-events">{html.escape(events.title)}</a></li>')
        body = [f'<section id="section-events"><h2>{html.escape(events.title)}</h2><p>{events.intro}</p>']
        body += [_figure_html(fig, f"figure-{next(figure_ids)}") for fig in events.figures]
        parts.append("\n".join(body + events.notes) + "</section>")
    any_figures = next(figure_ids) > 0  # the counter's next value is the number of figures
    draw_all = ('<p><button type="button" onclick="pythiaDynamics.drawAll()">Draw every figure now</button> '
                "(figures are drawn as they scroll into view)</p>") if any_figures else ""
    models = ", ".join(html.escape(m) for m in source_meta) or "no models yet"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pythia_dynamics report: {models}</title>
<style>{_STYLE}</style></head><body>
<h1>Training dynamics: {models}</h1>
<p>Made by pythia_dynamics {__version__} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from
{', '.join(html.escape(str(s.path)) for s in opened)}.</p>
<nav><h3>Contents</h3><ol>{''.join(toc) or '<li>The store holds no results yet.</li>'}</ol>{draw_all}</nav>
{''.join(parts[:1] if analyses[:1] == ["audit"] else [])}
{_coverage_section(opened)}
{''.join(parts[1:] if analyses[:1] == ["audit"] else parts)}
{_plotly_scripts() if any_figures else ""}
</body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


# Drawn near the screen: a figure whose placeholder comes within this margin of the viewport is drawn.
LAZY_MARGIN_PX = 300
# plotly's default height, for the placeholder of a figure that sets none (so the page does not jump).
_DEFAULT_HEIGHT_PX = 450

# Figures are drawn when they come near the screen (IntersectionObserver), not all at load: a full-size
# store's report has dozens of large figures, and drawing them all kept headless Chromium busy for a minute
# (docs/performance.md). Each figure's spec sits in a script element the browser does not run until then.
# `pythiaDynamics.drawAll()` (the button in the contents, or the URL ending in #draw-all) draws every one,
# e.g. before printing or searching the page.
_LAZY_LOADER = """
(function () {
  var figures = Array.prototype.slice.call(document.querySelectorAll("div.pd-lazy"));
  function draw(div) {
    if (div.hasAttribute("data-drawn")) return;
    div.setAttribute("data-drawn", "drawing");
    var spec = JSON.parse(document.getElementById(div.id + "-spec").textContent);
    Plotly.newPlot(div, spec.data, spec.layout, {responsive: true}).then(function () {
      if (spec.frames) return Plotly.addFrames(div, spec.frames);
    }).then(function () { div.setAttribute("data-drawn", "drawn"); });
  }
  function drawAll() { figures.forEach(draw); }
  window.pythiaDynamics = {drawAll: drawAll};
  if (!("IntersectionObserver" in window) || location.hash === "#draw-all") return drawAll();
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { observer.unobserve(entry.target); draw(entry.target); }
    });
  }, {rootMargin: "MARGINpx 0px"});
  figures.forEach(function (div) { observer.observe(div); });
})();
""".replace("MARGIN", str(LAZY_MARGIN_PX))


def _figure_html(fig: go.Figure, div_id: str) -> str:
    """A placeholder for `fig` (its height, so that the page does not jump) and the figure's JSON in a script
    element the browser does not run; `_LAZY_LOADER` draws it when it scrolls near the screen. The figure's
    slider, if any, opens where the figure's own traces are (no animation plays at load)."""
    spec = pio.to_json(compact_figure(fig)).replace("</", "<\\/")  # plotly escapes "/" already; be sure
    height = fig.layout.height or _DEFAULT_HEIGHT_PX
    return (f'<div id="{div_id}" class="plotly-graph-div pd-lazy" style="height:{height}px; width:100%;"></div>'
            f'<script type="application/json" id="{div_id}-spec">{spec}</script>')


def _plotly_scripts() -> str:
    """plotly.js inlined once (the page opens offline), then the loader that draws the figures."""
    from plotly.offline import get_plotlyjs

    return (f"<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>\n<script>{get_plotlyjs()}</script>\n"
            f"<script>{_LAZY_LOADER}</script>")


def _coverage_section(stores: list[Store]) -> str:
    """What the figures below lack: results that failed, are damaged, or were never computed, so that a
    gap in a curve is explained rather than silent."""
    import pandas as pd

    coverage = _concat([store.coverage() for store in stores])
    if coverage.empty:
        return (
            '<section id="coverage"><h2>Completeness</h2><p>Every analysis has a result at every checkpoint '
            "swept (each model's checkpoints are those at which any of its analyses has a result or a failure).</p></section>"
        )
    rows = []
    for (model, analysis, status), group in coverage.groupby(["model", "analysis", "status"], sort=True):
        details = pd.unique(group["detail"][group["detail"] != ""])
        detail = "; ".join(html.escape(str(d)) for d in details[:3]) + (" ..." if len(details) > 3 else "")
        rows.append(
            f"<tr><td>{html.escape(model)}</td><td>{html.escape(analysis)}</td><td>{status}</td>"
            f"<td>{html.escape(describe_steps(group['step'].tolist()))}</td><td>{detail}</td></tr>"
        )
    return (
        '<section id="coverage"><h2>Completeness</h2><p>Some checkpoints have no result for some analyses, so '
        "the figures below have gaps there. <i>failed</i>: the analysis raised an error (the sweep records it "
        "and goes on); <i>damaged</i>: the stored file cannot be read back (<code>pythia-dynamics verify STORE "
        "--repair</code> removes it and the next sweep recomputes it); <i>missing</i>: never computed (sweep "
        "again to fill it in).</p><table class=\"summary\"><tr><th>model</th><th>analysis</th><th>status</th>"
        f"<th>checkpoints</th><th>why</th></tr>{''.join(rows)}</table></section>"
    )


def read_section_inputs(stores: Sequence[Store], analysis: str, source_meta: dict[str, dict]) -> SectionInputs:
    """What `analysis`'s section draws: its scalars, only the arrays its section registered
    (`figures.sections.array_reads`), from every store, and the tables it registered as derived from them."""
    scalars = _concat([s.scalars(analysis=analysis) for s in stores])
    reads = array_reads(analysis, scalars)
    arrays = [s.arrays(analysis=analysis, **filters) for s in stores for filters in reads]
    arrays = _concat(arrays) if arrays else pd.DataFrame(columns=list(ARRAY_COLUMNS))  # a section that draws none
    derived = {name: compute(list(stores)) for name, compute in derived_reads(analysis).items()}
    return SectionInputs(scalars, arrays, source_meta, derived)


def _read_suspects(stores: Sequence[Store]) -> dict[str, dict[int, str]]:
    """The audit's suspect checkpoints and their reasons (marked on every figure over training)."""
    scalars = _concat([s.scalars(analysis="audit", stat="suspect") for s in stores])
    arrays = _concat([s.arrays(analysis="audit", name="reasons") for s in stores])
    return stored_suspects(scalars, arrays)


def _formation_marks(stores: Sequence[Store]) -> dict[int, str]:
    return formation_marks(_concat([s.scalars(analysis="head_scores", stat=list(LOSS_CURVE_SCORES)) for s in stores]))


# Whole-number floats below this are written as integers (exact, and plotly narrows them to 1-4 bytes).
_EXACT_F32 = 2**24


def compact_figure(fig: go.Figure) -> go.Figure:
    """`fig` with its numeric data (x, y, z of every trace and frame) as numpy arrays of the narrowest
    exact type: integers as int64 (which plotly writes as the narrowest int type that holds them), other
    numbers as float32 (7 significant digits, more than a plot shows; values beyond float32's range stay
    float64). Plotly writes numpy arrays into the page as base64 typed arrays, about a third of the size
    of their JSON text; a Python list of floats (or one with None) would be written as text."""
    traces = list(fig.data) + [trace for frame in fig.frames or () for trace in frame.data or ()]
    for trace in traces:
        for attr in ("x", "y", "z"):
            value = getattr(trace, attr, None) if attr in trace else None
            packed = _packed(value)
            if packed is not None and not (isinstance(value, np.ndarray) and value.dtype == packed.dtype):
                trace[attr] = None  # plotly ignores setting a value equal to the one held (the list)
                trace[attr] = packed
    return fig


def _packed(value) -> np.ndarray | None:
    """The compact numpy form of a numeric trace array, or None to leave it as it is (text, dates...)."""
    if value is None or isinstance(value, str):
        return None
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if arr.dtype == object:  # numbers mixed with None (gaps): None -> NaN
        if not all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in arr.ravel()):
            return None
        arr = np.array([np.nan if v is None else v for v in arr.ravel()], dtype=np.float64).reshape(arr.shape)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64) if arr.size else None  # plotly writes int64 in the narrowest int type
    if arr.dtype.kind != "f" or arr.size == 0:
        return None
    finite = arr[np.isfinite(arr)]
    if finite.size and np.all(finite == np.rint(finite)) and np.abs(finite).max() < _EXACT_F32 and np.isfinite(arr).all():
        return arr.astype(np.int64)
    if finite.size and np.abs(finite).max() > np.finfo(np.float32).max / 2:
        return arr.astype(np.float64)
    return arr.astype(np.float32)


def _concat(frames):
    import pandas as pd

    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)
