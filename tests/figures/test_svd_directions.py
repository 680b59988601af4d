import re

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


@pytest.fixture(scope="module")
def long_store(tmp_path_factory, two_model_store):
    """tiny-test's three stored checkpoints written again at 20 steps (more than the browser shows), so that
    what the report reads and draws can be counted."""
    source = Store(two_model_store)
    store = Store.create(tmp_path_factory.mktemp("svd-long") / "store", fsync=False)
    stored = source.steps("tiny-test", "svd_directions")
    for i in range(20):
        origin = stored[i % len(stored)] if i < 19 else stored[-1]  # the final step is the trained one
        keep = lambda df: df.drop(columns=["model", "step", "analysis"])  # noqa: E731
        scalars = source.scalars(model="tiny-test", analysis="svd_directions", steps=origin)
        arrays = source.arrays(model="tiny-test", analysis="svd_directions", steps=origin)
        store.write_result("tiny-test", 10 * i, "svd_directions", keep(scalars), keep(arrays))
    return store


def test_the_report_computes_the_agreement_once_and_reads_the_browser_steps_only(long_store, tmp_path, monkeypatch):
    """The events section's agreement series and this section's curves are one computation (one read of every
    matrix's token ids); the token browser reads its block at the checkpoints it shows; the section draws
    what it draws from the whole store."""
    from pythia_dynamics.figures.svd_directions import DRIFT_STEPS, browser_steps

    import threading

    reads, threads = [], []
    original = Store.arrays

    def recording(self, **filters):
        if filters.get("analysis") == "svd_directions":
            reads.append(filters)
            threads.append(threading.current_thread())
        return original(self, **filters)

    monkeypatch.setattr(Store, "arrays", recording)
    build_report([long_store.path], tmp_path / "report.html")
    agreement = [f for f in reads if "top_token_ids" in (f.get("name") or []) and f.get("steps") is None]
    assert len(agreement) == 1 and agreement[0].get("layer") is None  # every matrix, once ...
    assert threads[reads.index(agreement[0])] is not threading.main_thread()  # ... prefetched beside the events' reads
    [browser] = [f for f in reads if f is not agreement[0]]
    steps = long_store.steps("tiny-test", "svd_directions")
    middle, final, drift = browser_steps(steps)
    assert browser["layer"] == [1] and browser["steps"] == sorted({middle, final, *drift})
    assert len(drift) == DRIFT_STEPS and drift[0] == 0 and drift[-1] == 190 and middle == 100

    monkeypatch.setattr(Store, "arrays", original)
    from pythia_dynamics.report import read_section_inputs
    from pythia_dynamics.svd_agreement import shared_agreement

    with shared_agreement():
        shown = render_section("svd_directions", read_section_inputs([long_store], "svd_directions", {}))
    whole = render_section("svd_directions", SectionInputs(long_store.scalars(analysis="svd_directions"),
                                                           long_store.arrays(analysis="svd_directions"), {}))  # fmt: skip
    assert [f.to_json() for f in shown.figures] == [f.to_json() for f in whole.figures]
    unnamed = lambda notes: [re.sub(r"circuits-vis-[0-9a-f-]+", "circuits-vis-?", note) for note in notes]  # noqa: E731 (random ids)
    assert unnamed(shown.notes) == unnamed(whole.notes) and "circuitsvis-view" in shown.notes[0]


def test_shared_agreement_computes_once_per_block(two_model_store, monkeypatch):
    from pythia_dynamics.svd_agreement import shared_agreement

    outside = svd_agreement(two_model_store, level="direction")
    outside_blocks = svd_agreement(two_model_store, level="block")
    calls = []
    original = Store.arrays
    monkeypatch.setattr(Store, "arrays", lambda self, **f: calls.append(f) or original(self, **f))
    with shared_agreement():
        first = svd_agreement(two_model_store, level="model")
        again = {level: svd_agreement(Store(two_model_store), level=level) for level in ("direction", "block", "model")}
        one_model = svd_agreement(two_model_store, model="tiny-test", level="model")  # another key: computed
    assert len(calls) == 2
    import pandas as pd

    pd.testing.assert_frame_equal(again["direction"], outside)
    pd.testing.assert_frame_equal(again["model"], first)
    pd.testing.assert_frame_equal(again["block"], outside_blocks)
    pd.testing.assert_frame_equal(one_model, first[first["model"] == "tiny-test"].reset_index(drop=True))
    svd_agreement(two_model_store, level="model")  # outside the block: read again
    assert len(calls) == 3


def test_a_prefetched_agreement_is_computed_once_in_the_background(two_model_store, monkeypatch):
    import threading

    import pandas as pd

    from pythia_dynamics.svd_agreement import prefetch_agreement, shared_agreement

    expected = svd_agreement(two_model_store, level="block")
    threads = []
    original = Store.arrays
    monkeypatch.setattr(Store, "arrays", lambda self, **f: threads.append(threading.current_thread()) or original(self, **f))
    store = Store(two_model_store)
    with shared_agreement():
        prefetch_agreement([store])
        prefetch_agreement([store])  # already under way: not started again
        blocks = svd_agreement(store, level="block")
        models = svd_agreement(two_model_store, level="model")
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    pd.testing.assert_frame_equal(blocks, expected)
    pd.testing.assert_frame_equal(models, svd_agreement(two_model_store, level="model"))
    with pytest.raises(RuntimeError, match="shared_agreement"):
        prefetch_agreement([store])


def test_a_failed_prefetch_raises_where_the_agreement_is_asked_for(tmp_path):
    from pythia_dynamics.svd_agreement import prefetch_agreement, shared_agreement

    empty = Store.create(tmp_path / "empty", fsync=False)
    with shared_agreement():
        prefetch_agreement([empty])
        with pytest.raises(ValueError, match="no svd_directions results"):
            svd_agreement(empty, level="model")
