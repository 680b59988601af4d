"""The self-contained HTML report: one section per analysis present in the store(s).

Reads stores only. plotly.js is inlined once, so the file opens offline in any browser.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import plotly.io as pio

from pythia_dynamics import __version__
from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.figures.events import events_section, mark_changes, mark_events
from pythia_dynamics.figures.circuits import FORMATION_MARK, formation_marks
from pythia_dynamics.figures.sections import mark_steps, mark_suspect_steps, stored_suspects
from pythia_dynamics.store import Store, describe_steps

__all__ = ["build_report"]

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
    """Write `out` (an HTML file) from one or more result stores; returns its path."""
    opened = [Store(path) for path in stores]
    scalars = _concat([s.scalars() for s in opened])
    arrays = _concat([s.arrays() for s in opened])
    source_meta = {model: s.source_meta(model) or {} for s in opened for model in s.models()}
    present = set(scalars["analysis"]) | set(arrays["analysis"])
    analyses = [a for a in SECTION_ORDER if a in present] + sorted(present - set(SECTION_ORDER))
    parts, toc = [], []
    suspects = stored_suspects(scalars, arrays)
    plotly_js_included = False
    events = events_section(opened)  # not an analysis: computed from every scalar series of the stores
    formed = formation_marks(scalars)
    for analysis in analyses:
        inputs = SectionInputs(
            scalars[scalars["analysis"] == analysis], arrays[arrays["analysis"] == analysis], source_meta
        )
        sec = render_section(analysis, inputs)
        for fig in sec.figures:
            mark_suspect_steps(fig, suspects)
            if events is not None:
                mark_events(fig, events.marks)
                mark_changes(fig, analysis, events)
            if analysis == "eval_loss":  # when the circuits formed, against the loss curve
                mark_steps(fig, formed, FORMATION_MARK, "circuit formed (half-way step)", "formation")
        anchor = f"section-{analysis}"
        toc.append(f'<li><a href="#{anchor}">{html.escape(sec.title)}</a></li>')
        body = [f'<section id="{anchor}"><h2>{html.escape(sec.title)}</h2><p>{sec.intro}</p>']
        for fig in sec.figures:
            body.append(pio.to_html(fig, full_html=False, include_plotlyjs=not plotly_js_included))
            plotly_js_included = True
        body += sec.notes
        parts.append("\n".join(body) + "</section>")
    if events is not None:
        toc.append(f'<li><a href="#section-events">{html.escape(events.title)}</a></li>')
        body = [f'<section id="section-events"><h2>{html.escape(events.title)}</h2><p>{events.intro}</p>']
        for fig in events.figures:
            body.append(pio.to_html(fig, full_html=False, include_plotlyjs=not plotly_js_included))
            plotly_js_included = True
        parts.append("\n".join(body + events.notes) + "</section>")
    models = ", ".join(html.escape(m) for m in source_meta) or "no models yet"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pythia_dynamics report: {models}</title>
<style>{_STYLE}</style></head><body>
<h1>Training dynamics: {models}</h1>
<p>Made by pythia_dynamics {__version__} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from
{', '.join(html.escape(str(s.path)) for s in opened)}.</p>
<nav><h3>Contents</h3><ol>{''.join(toc) or '<li>The store holds no results yet.</li>'}</ol></nav>
{''.join(parts[:1] if analyses[:1] == ["audit"] else [])}
{_coverage_section(opened)}
{''.join(parts[1:] if analyses[:1] == ["audit"] else parts)}
</body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


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


def _concat(frames):
    import pandas as pd

    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)
