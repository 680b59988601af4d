import re

import numpy as np
import pandas as pd

from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.fits import FAMILIES
from pythia_dynamics.report import build_report
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep


def test_report_section_animates_histograms_and_qq_plots_over_the_swept_steps(tiny_suite, tmp_path):
    summary = sweep(tiny_suite, tmp_path / "s", analyses="weight_distributions", steps="first:2,last", audit=False,
                    progress=False)  # fmt: skip
    assert summary.failed == [] and summary.done == [0, 1, 40]
    page = build_report([tmp_path / "s"], tmp_path / "report.html").read_text()
    assert re.findall(r'<section id="section-([\w]+)"', page) == ["weight_distributions", "events"]
    assert "Weight distributions" in page and "addFrames" in page and '"sliders"' in page

    store = Store(tmp_path / "s")
    section = render_section("weight_distributions", SectionInputs(store.scalars(), store.arrays(), {}))
    animated = [f for f in section.figures if f.frames]
    # One animated figure per matrix kind of the study, each with a frame and a slider step per checkpoint.
    assert [f.layout.title.text.split(":")[1].split()[0] for f in animated] == ["W_QKV", "W_O", "W_in", "W_out", "W_E", "W_U"]
    for fig in animated:
        assert [fr.name for fr in fig.frames] == ["0", "1", "40"]
        assert [s.label for s in fig.layout.sliders[0].steps] == ["0", "1", "40"]
        assert fig.layout.yaxis.type == "log" and fig.layout.yaxis3.type == "log"
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text and fig.layout.xaxis2.title.text

    # The W_in frame at step 40, block 1: the stored counts as a density on the stored edges.
    w_in = animated[2]
    frame = next(fr for fr in w_in.frames if fr.name == "40")
    hist = next(t for t in frame.data if t.name == "block 1" and t.xaxis == "x")
    counts = store.array("tiny-test", 40, "weight_distributions", "W_in", "histogram", layer=1)
    edges = store.array("tiny-test", 40, "weight_distributions", "W_in", "histogram_edges", layer=1)
    density = counts / (counts.sum() * np.diff(edges))
    # Every occupied bin is drawn at its left edge with its density (single precision); empty ones are gaps.
    # The bins are the same at every step, so frames leave x out and keep the figure's own (a smaller page).
    shown = next(t for t in w_in.data if t.name == "block 1" and t.xaxis == "x")
    assert hist.x is None and shown.x is not None
    x, y = np.asarray(shown.x, dtype=float)[:-1], np.asarray(hist.y, dtype=float)[:-1]
    bins = np.searchsorted(edges.astype(np.float32), x.astype(np.float32))
    assert np.allclose(edges[bins], x, rtol=1e-6)
    drawn = np.isfinite(y)
    assert set(bins[drawn]) == set(np.flatnonzero(counts)) and np.allclose(y[drawn], density[bins[drawn]], rtol=1e-6)
    qq = next(t for t in frame.data if t.name == "block 1" and t.xaxis == "x2")
    stored_qq = store.array("tiny-test", 40, "weight_distributions", "W_in", "qq_gaussian", layer=1)
    assert np.array_equal(qq.x, stored_qq[:, 1].astype(np.float32)) and np.array_equal(qq.y, stored_qq[:, 2].astype(np.float32))

    # Shape parameters over training: one line per (component, block) with a log-x toggle.
    summaries = {f.layout.title.text.split(": ", 1)[1].split(" ")[0]: f for f in section.figures if not f.frames}
    assert set(summaries) == {"Student-t", "Generalised-normal", "Excess", "Best-fitting"}
    nu = summaries["Student-t"]
    assert nu.layout.updatemenus and {t.name for t in nu.data} >= {"block 0", "block 1", "W_E", "W_U"}
    stored_nu = store.scalars(component="W_in", layer=[0], stat="student_t_nu").sort_values("step")["value"]
    trace = next(t for t in nu.data if t.name == "block 0" and "W_in" in t.hovertemplate)
    assert np.array_equal(np.asarray(trace.y, dtype=float), stored_nu.to_numpy())
    best = summaries["Best-fitting"]
    assert list(best.layout.yaxis.ticktext) == list(FAMILIES)


def test_section_subsamples_long_sweeps_and_overlays_models():
    """Synthetic store tables: 40 checkpoints of two models; at most MAX_FRAMES frames, log-spaced."""
    from pythia_dynamics.figures.weight_distributions import MAX_FRAMES

    edges = np.linspace(-1, 1, 5)
    arrays, scalars = [], []
    for model in ("a", "b"):
        for step in range(0, 400, 10):
            base = dict(model=model, step=step, analysis="weight_distributions", component="W_E", layer=pd.NA, head=pd.NA)
            arrays.append(base | dict(name="histogram", shape=[4], values=np.array([0.0, 3.0, 0.0, 1.0]), text=None))
            arrays.append(base | dict(name="histogram_edges", shape=[5], values=edges, text=None))
            scalars.append(base | dict(stat="student_t_nu", value=3.0 + step))
    section = render_section(
        "weight_distributions", SectionInputs(pd.DataFrame(scalars), pd.DataFrame(arrays), {})
    )
    animated = [f for f in section.figures if f.frames]
    assert len(animated) == 2 and [f.layout.title.text.split(":")[0] for f in animated] == ["a", "b"]
    names = [int(fr.name) for fr in animated[0].frames]
    assert len(names) <= MAX_FRAMES and names[0] == 0 and names[-1] == 390 and names == sorted(names)
    assert any("of 40 checkpoints" in note for note in section.notes)
    # Empty bins are gaps on the log axis, not zeros; bins no frame occupies are left out.
    hist = animated[0].frames[-1].data[0]
    assert hist.x is None  # the same bins in every frame: the figure's own x (animated[0].data) stays
    assert np.array_equal(animated[0].data[0].x, [-0.5, 0.0, 0.5, 1.0])
    assert np.allclose(hist.y, [0.75 / 0.5, np.nan, 0.25 / 0.5, 0.25 / 0.5], equal_nan=True)
