import re

import numpy as np
import pytest

from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.figures.sections import animation_steps
from pythia_dynamics.figures.spectra import MAX_FRAMES
from pythia_dynamics.report import build_report
from pythia_dynamics.schedule import PYTHIA_STEPS
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep

STEPS = [0, 1, 40]  # "first:2,last" of the tiny suite


@pytest.fixture(scope="module")
def store(tiny_suite, tmp_path_factory):
    path = tmp_path_factory.mktemp("spectra-report") / "store"
    summary = sweep(tiny_suite, path, steps="first:2,last", analyses="spectra,embeddings", progress=False)
    assert summary.failed == [] and summary.done == STEPS
    return Store(path)


def section_of(store, analysis):
    scalars, arrays = store.scalars(analysis=analysis), store.arrays(analysis=analysis)
    return render_section(analysis, SectionInputs(scalars, arrays, {m: store.source_meta(m) for m in store.models()}))


def test_report_has_both_sections(store, tmp_path):
    page = build_report([store.path], tmp_path / "report.html").read_text()
    sections = re.findall(r'<section id="section-([\w]+)"', page)
    assert "spectra" in sections and "embeddings" in sections
    assert "Singular-value spectra" in page and "Token embeddings" in page


def test_spectrum_figures_are_log_log_rank_against_singular_value_with_a_step_slider(store):
    section = section_of(store, "spectra")
    spectra = [f for f in section.figures if f.layout.sliders]
    titles = [f.layout.title.text for f in spectra]
    assert [re.search(r"singular values of (.+) at step", t).group(1) for t in titles] == [
        "W_QKV", "W_O", "W_in", "W_out", "W_E and W_U"
    ]  # fmt: skip
    for fig in spectra:
        assert [s.label for s in fig.layout.sliders[0].steps] == [str(s) for s in STEPS]
        assert [f.name for f in fig.frames] == [str(s) for s in STEPS]
        assert all(len(frame.data) == len(fig.data) for frame in fig.frames)
        assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
        assert "rank" in fig.layout.xaxis.title.text and "singular value" in fig.layout.yaxis.title.text


def test_spectrum_traces_and_mp_edges_are_the_stored_values(store):
    fig = next(f for f in section_of(store, "spectra").figures if f.layout.sliders and "W_QKV" in f.layout.title.text)
    last = fig.frames[-1].data  # step 40, one spectrum and one dashed MP edge per block
    for layer in (0, 1):
        sigma = store.array("tiny-test", 40, "spectra", "W_QKV", "singular_values", layer=layer)
        curve = next(t for t in last if t.name == f"block {layer}")
        np.testing.assert_allclose(curve.y, sigma, rtol=1e-6)
        assert list(curve.x) == list(range(1, sigma.size + 1))
        edge = store.scalars(analysis="spectra", component="W_QKV", stat="mp_edge", layer=layer, head=[None], steps=[40])
        dashed = next(t for t in last if t.name == f"block {layer}: MP edge")
        assert dashed.line.dash == "dash" and dashed.y[0] == pytest.approx(edge["value"].item())


def test_alpha_and_outlier_counts_over_training_per_block(store):
    figures = section_of(store, "spectra").figures
    for stat_words in ("power-law exponent", "Marchenko–Pastur edge over training"):
        fig = next(f for f in figures if stat_words in f.layout.title.text)
        blocks = {t.name for t in fig.data if t.showlegend}
        assert blocks == {"block 0", "block 1"}
        assert fig.layout.updatemenus  # the linear/log x toggle
        qkv_block_1 = [t for t in fig.data if t.name == "block 1" and t.xaxis == "x"]
        assert len(qkv_block_1) == 1 and list(qkv_block_1[0].x) == STEPS  # one line per block, not per head


def test_animation_steps_keep_short_runs_whole_and_subsample_long_ones_in_log_step():
    assert animation_steps([40, 0, 1], MAX_FRAMES) == STEPS
    chosen = animation_steps(PYTHIA_STEPS, MAX_FRAMES)
    assert len(chosen) <= MAX_FRAMES and chosen[0] == 0 and chosen[-1] == 143000
    assert set(chosen) <= set(PYTHIA_STEPS) and sum(s <= 1000 for s in chosen) >= MAX_FRAMES // 2
