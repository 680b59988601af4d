import numpy as np
import pytest

from pythia_dynamics import sweep
from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.report import build_report
from pythia_dynamics.store import Store
from pythia_dynamics.svd_agreement import METRICS, svd_agreement


@pytest.fixture(scope="module")
def two_model_store(tmp_path_factory, tiny_suite, random_suite):
    """The trained suite (with a tokenizer) and the random one (ids only), three checkpoints each."""
    store = tmp_path_factory.mktemp("svd-section") / "store"
    sweep(tiny_suite, store, steps="0,20,40", analyses="svd_directions", progress=False)
    sweep(random_suite, store, steps="0,4,8", analyses="svd_directions", progress=False)
    return store


@pytest.fixture(scope="module")
def rendered(two_model_store):
    s = Store(two_model_store)
    scalars, arrays = s.scalars(analysis="svd_directions"), s.arrays(analysis="svd_directions")
    return render_section("svd_directions", SectionInputs(scalars, arrays, {}))


def test_block_curves_plot_the_agreement_table(two_model_store, rendered):
    sec = rendered
    assert len(sec.figures) == 3  # one per model, then the overlay of model averages
    blocks = svd_agreement(two_model_store, level="block")
    fig = next(f for f in sec.figures if f.layout.title.text.startswith("tiny-test"))
    assert len(fig.data) == 3 * len(METRICS) * 2  # components x metrics x blocks
    # Panels run component by component (OV, W_in, W_out), metric by metric; W_out/in_final is the 8th.
    panel = [t for t in fig.data if t.xaxis == "x8"]
    assert [t.name for t in panel] == ["block 0", "block 1"]
    expected = blocks.query("model == 'tiny-test' and component == 'W_out' and layer == 1").sort_values("step")
    np.testing.assert_allclose(panel[1].y, expected["in_final"])
    assert list(panel[1].x) == [0, 20, 40] and panel[1].y[-1] == 1.0
    assert fig.layout.xaxis7.title.text == "training step" and fig.layout.yaxis.title.text == "fraction of tokens"


def test_model_average_overlays_every_model(two_model_store, rendered):
    overlay = rendered.figures[-1]
    assert {t.name for t in overlay.data} == {"random-tiny", "tiny-test"}
    models = svd_agreement(two_model_store, level="model")
    trace = next(t for t in overlay.data if t.name == "random-tiny" and t.xaxis == "x")  # OV, exact
    expected = models.query("model == 'random-tiny' and component == 'OV'").sort_values("step")["exact"]
    np.testing.assert_allclose(trace.y, expected)


def test_browser_inlines_circuitsvis_once_and_shows_the_trained_model(rendered):
    notes = rendered.notes
    assert len(notes) == 1
    html = notes[0]
    assert html.count("var CircuitsVis=") == 1 and "window.CircuitsVis = CircuitsVis;" in html
    assert html.count('class="circuitsvis-view"') == 3  # MLP directions, OV heads, W_out drift
    assert "tiny-test, block 1" in html and "unpkg.com" not in html
    assert "block 1 W_out" in html and "block 1 OV head 3" in html


def test_report_contains_the_section(two_model_store, tmp_path):
    out = build_report([two_model_store], tmp_path / "report.html")
    text = out.read_text(encoding="utf-8")
    assert 'id="section-svd_directions"' in text and "SVD directions: agreement with the final checkpoint" in text
