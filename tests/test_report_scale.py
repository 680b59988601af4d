"""Reports of large stores: each section reads only what it draws, and figure data go into the page compactly.

Stores are planted (written here with known rows), so the reads, the frames and the sizes have known answers.
"""

import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.figures.spectra import MAX_RANKS, drawn_ranks
from pythia_dynamics.figures.weight_distributions import ANIMATED_COMPONENTS, DRAWN_ARRAYS, MAX_LINE_FRAMES
from pythia_dynamics.report import build_report, compact_figure
from pythia_dynamics.store import Store

MODEL = "planted"
EDGES = np.linspace(-1, 1, 41)


def _distribution_rows(component, layer, step, rng):
    counts = rng.integers(0, 50, size=40).astype(float)
    qq = np.sort(rng.normal(size=(30, 3)), axis=0)
    return [
        dict(component=component, layer=layer, head=None, name="histogram", shape=[40], values=counts, text=None),
        dict(component=component, layer=layer, head=None, name="histogram_edges", shape=[41], values=EDGES, text=None),
        dict(component=component, layer=layer, head=None, name="qq_gaussian", shape=[30, 3], values=qq.ravel(), text=None),
        dict(component=component, layer=layer, head=None, name="qq_powerlaw", shape=[30, 3], values=np.abs(qq).ravel(), text=None),
        dict(component=component, layer=layer, head=None, name="best_family", shape=[1], values=[1.0], text=None),
    ]


def write_store(path, steps, n_layers, n_sigma=64, seed=0) -> Store:
    """weight_norms (scalars only), weight_distributions (W_in drawn; W_Q and best_family not drawn) and
    spectra (whole-matrix spectra drawn; per-head ones not), at `steps` for `n_layers` blocks."""
    rng = np.random.default_rng(seed)
    store = Store.create(path, fsync=False)
    for step in steps:
        norms = [dict(component="W_in", layer=layer, head=None, stat="frobenius_norm", value=1.0 + step / 1000 + layer)
                 for layer in range(n_layers)]  # fmt: skip
        store.write_result(MODEL, step, "weight_norms", pd.DataFrame(norms))
        arrays, scalars = [], []
        for layer in range(n_layers):
            for component in ("W_in", "W_Q"):
                arrays += _distribution_rows(component, layer, step, rng)
                scalars.append(dict(component=component, layer=layer, head=None, stat="student_t_nu", value=3.0 + layer))
        store.write_result(MODEL, step, "weight_distributions", pd.DataFrame(scalars), arrays)
        sigma = np.sort(rng.gamma(2.0, size=n_sigma))[::-1] * (1 + step / 1000)
        arrays = [dict(component="W_in", layer=layer, head=None, name="singular_values", shape=[n_sigma], values=sigma, text=None)
                  for layer in range(n_layers)]  # fmt: skip
        arrays += [dict(component="W_Q", layer=0, head=h, name="singular_values", shape=[8], values=sigma[:8], text=None)
                   for h in range(2)]  # fmt: skip
        scalars = [dict(component="W_in", layer=layer, head=None, stat=stat, value=v)
                   for layer in range(n_layers) for stat, v in (("mp_edge", 1.5), ("powerlaw_alpha", 3.0 + layer))]  # fmt: skip
        store.write_result(MODEL, step, "spectra", pd.DataFrame(scalars), arrays)
    return store


def test_each_section_reads_only_what_it_draws(tmp_path, monkeypatch):
    write_store(tmp_path / "s", steps=[0, 10, 100], n_layers=2)
    calls = {"scalars": [], "arrays": []}
    returned = {}
    for kind in calls:
        original = getattr(Store, kind)

        def recording(self, *args, _kind=kind, _original=original, **filters):
            assert not args, "the report passes filters by name"
            calls[_kind].append(filters)
            rows = _original(self, **filters)
            returned.setdefault(_kind, []).append(rows)
            return rows

        monkeypatch.setattr(Store, kind, recording)
    build_report([tmp_path / "s"], tmp_path / "report.html")

    # Scalars: one read per section, filtered to its analysis; the events section's one read of every series.
    per_analysis = [f["analysis"] for f in calls["scalars"] if f.get("analysis") is not None]
    assert sorted(per_analysis) == ["spectra", "weight_distributions", "weight_norms"]
    assert len([f for f in calls["scalars"] if f.get("analysis") is None]) == 1
    # Arrays: only for the sections that draw them, each with its analysis and the section's own filters.
    reads = {f["analysis"]: f for f in calls["arrays"]}
    assert all(f.get("analysis") is not None for f in calls["arrays"])
    assert "weight_norms" not in reads
    # The distributions: the animated matrices that have results (W_in; not W_Q), at the animated checkpoints.
    distributions = [f for f in calls["arrays"] if f["analysis"] == "weight_distributions"]
    assert distributions == [dict(analysis="weight_distributions", model=[MODEL], name=DRAWN_ARRAYS, component=["W_in"], steps=[0, 10, 100])]
    assert set(distributions[0]["component"]) < set(ANIMATED_COMPONENTS)
    # The spectra: whole matrices only, at the checkpoints the sliders show (here all three).
    assert reads["spectra"] == dict(analysis="spectra", model=[MODEL], name=["singular_values"], head=[None], steps=[0, 10, 100])
    # ... so the rows the report held are the drawn ones only (no W_Q, no best_family, no per-head spectra).
    rows = pd.concat([r for r in returned["arrays"] if len(r)], ignore_index=True)
    assert set(rows["name"]) == {*DRAWN_ARRAYS, "singular_values"}
    assert set(rows.loc[rows["analysis"] == "weight_distributions", "component"]) == {"W_in"}
    assert rows.loc[rows["analysis"] == "spectra", "head"].isna().all()


def test_compact_figure_writes_numbers_as_typed_arrays():
    steps = [0, 1, 2, 4, 143000]
    y = [0.1, None, 2.5e-7, 3.0, float("nan")]
    fig = go.Figure(go.Scatter(x=steps, y=y, text=["a", "b", "c", "d", "e"]))
    fig.add_trace(go.Heatmap(z=np.arange(6, dtype=np.float64).reshape(2, 3) / 7, x=["u", "v", "w"]))
    fig.frames = [go.Frame(data=[go.Scatter(y=[1.5, 2.5])], name="0")]
    data = json.loads(pio.to_json(compact_figure(fig)))
    scatter, heatmap = data["data"]
    assert scatter["x"]["dtype"] in ("i1", "i2", "i4") and scatter["y"]["dtype"] == "f4"  # steps exact, values float32
    assert heatmap["z"]["dtype"] == "f4" and heatmap["x"] == ["u", "v", "w"]  # text stays text
    assert data["frames"][0]["data"][0]["y"]["dtype"] == "f4"
    back = np.asarray(fig.data[0].y)
    assert np.allclose(back, np.array([0.1, np.nan, 2.5e-7, 3.0, np.nan], dtype=np.float32), equal_nan=True, rtol=0)
    assert np.array_equal(fig.data[0].x, steps)


def test_long_spectra_are_drawn_at_log_spaced_ranks():
    ranks = drawn_ranks(2048)
    assert ranks[0] == 1 and ranks[-1] == 2048 and len(ranks) <= MAX_RANKS and np.all(np.diff(ranks) > 0)
    assert list(drawn_ranks(50)) == list(range(1, 51))
    # Evenly spaced in log(rank): the gaps in log rank are at most twice the even gap (rounding at low ranks).
    gaps = np.diff(np.log(ranks[ranks > 20]))
    assert gaps.max() < 2 * np.log(2048) / (MAX_RANKS - 1)


def test_a_store_of_many_layers_gives_a_bounded_report(tmp_path):
    """60 checkpoints x 24 blocks with 1024-long spectra: the sliders are cut to the frame budget (and say so),
    the spectra are drawn at log-spaced ranks, and the page stays under a bound that drawing every checkpoint
    of the section's usual slider and every rank exceeds."""
    steps = [0, *[2**i for i in range(10)], *range(1000, 50000, 1000)][:60]
    store = write_store(tmp_path / "s", steps=steps, n_layers=24, n_sigma=1024)
    page = build_report([tmp_path / "s"], tmp_path / "report.html").read_text()

    inputs = SectionInputs(store.scalars(analysis="weight_distributions"), store.arrays(analysis="weight_distributions"), {})
    animated = [f for f in render_section("weight_distributions", inputs).figures if f.frames]
    frames = len(animated[0].frames)
    assert frames == MAX_LINE_FRAMES // 24
    assert f"(slider: {frames} of 60 checkpoints, log-spaced)" in animated[0].layout.title.text
    spectra = render_section("spectra", SectionInputs(store.scalars(analysis="spectra"), store.arrays(analysis="spectra", head=[None]), {}))
    sigma = next(t for t in spectra.figures[0].data if t.name == "block 0")
    assert len(sigma.y) == len(drawn_ranks(1024)) and list(sigma.x) == list(drawn_ranks(1024))
    assert any("drawn at" in note for note in spectra.notes)

    # The bound: the old frames (32 a slider, every bin and rank, float64 as text for lists) would be many times it.
    data = len(page) - len(re.search(r"<script[^>]*>/\*\*.*?</script>", page, re.S).group(0))  # less plotly.js
    old_floats = 32 * 24 * (2 * 41 + 4 * 30) + 16 * 24 * 1024 * 2  # distribution frames + spectrum frames
    assert data < 3e6 < old_floats * 4 * 4 / 3  # as float32 base64, the old frames alone would exceed it


@pytest.mark.slow
def test_trajectories_of_series_already_read_equal_those_of_the_store(tmp_path):
    """What the events section fits (the series `events` read, less the SVD agreement) is what
    `timeline.trajectories(store)` fits reading the store again; `sample` keeps evenly spaced series."""
    from pythia_dynamics.figures.events import _without_svd_agreement
    from pythia_dynamics.timeline import events, trajectories
    from pythia_dynamics.timeline.planted import PlantedEvent, write_planted_store
    from pythia_dynamics.train.config import SuiteConfig

    steps = SuiteConfig().checkpoint_steps
    write_planted_store(tmp_path / "s", steps, [PlantedEvent(9, share=0.5)], n_series=60, seed=0)
    read = [_without_svd_agreement(s) for s in events(tmp_path / "s").series]
    for which in ("all", "headline"):
        pd.testing.assert_frame_equal(trajectories(read, series=which, max_series=6), trajectories(tmp_path / "s", series=which, max_series=6))
    every = trajectories(read, series="all")
    sampled = trajectories(read, series="all", sample=10)
    assert sampled["series"].nunique() == 10 and set(sampled["series"]) <= set(every["series"])
    first = every[every["series"] == sampled["series"].iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(sampled[sampled["series"] == first["series"].iloc[0]].reset_index(drop=True), first)


def test_figures_of_many_points_draw_lines_without_markers(tmp_path, monkeypatch):
    """Each marker is an SVG node: past MAX_MARKERS points a per-block figure draws lines only."""
    from pythia_dynamics.figures import sections

    store = write_store(tmp_path / "s", steps=[0, 10, 100], n_layers=24)
    inputs = SectionInputs(store.scalars(analysis="weight_distributions"), store.arrays(analysis="weight_distributions"), {})

    def nu_modes():
        figures = render_section("weight_distributions", inputs).figures
        nu = next(f for f in figures if "Student-t" in f.layout.title.text)
        return {t.mode for t in nu.data}

    assert nu_modes() == {"lines+markers"}  # 2 matrices x 24 blocks x 3 checkpoints = 144 points
    monkeypatch.setattr(sections, "MAX_MARKERS", 143)
    assert nu_modes() == {"lines"}


def test_sections_read_the_checkpoints_their_sliders_show_and_draw_the_same(tmp_path):
    """60 checkpoints x 24 blocks: the distributions animate 10 checkpoints and the spectra 16, so the report reads
    the arrays of those only, and the figures are the ones drawn from every stored array."""
    from pythia_dynamics.figures.spectra import MAX_FRAMES as SPECTRUM_FRAMES
    from pythia_dynamics.report import read_section_inputs

    steps = [0, *[2**i for i in range(10)], *range(1000, 50000, 1000)][:60]
    store = write_store(tmp_path / "s", steps=steps, n_layers=24, n_sigma=64)
    for analysis, shown in (("weight_distributions", MAX_LINE_FRAMES // 24), ("spectra", SPECTRUM_FRAMES)):
        read = read_section_inputs([store], analysis, {})
        assert read.arrays["step"].nunique() == shown < len(steps)
        whole = SectionInputs(store.scalars(analysis=analysis), store.arrays(analysis=analysis, head=[None]), {})
        drawn, expected = render_section(analysis, read), render_section(analysis, whole)
        assert [f.to_json() for f in drawn.figures] == [f.to_json() for f in expected.figures], analysis
        assert drawn.notes == expected.notes


def test_the_held_out_table_samples_every_group():
    """The report's table of every series' error fits at most SUMMARY_SERIES_PER_GROUP series of each group,
    evenly spaced within the group: a small group keeps all its series, a large one is cut."""
    from pythia_dynamics.figures.events import per_group_sample
    from pythia_dynamics.timeline.series import ModelSeries

    groups = ["loss"] * 2 + ["weights"] * 50 + ["activations"] * 7
    keys = pd.DataFrame({"analysis": [f"a{i}" for i in range(len(groups))], "group": groups})
    values = np.arange(len(groups) * 3, dtype=float).reshape(len(groups), 3)
    sampled = per_group_sample(ModelSeries("m", np.array([0, 1, 2]), keys, values), per_group=10)
    counts = sampled.keys["group"].value_counts().to_dict()
    assert counts == {"loss": 2, "weights": 10, "activations": 7}
    weights = sampled.keys.loc[sampled.keys["group"] == "weights", "analysis"].tolist()
    assert weights[0] == "a2" and weights[-1] == "a51"  # the group's first and last series, evenly between
    kept = [int(a[1:]) for a in sampled.keys["analysis"]]
    assert np.array_equal(sampled.values, values[kept])  # each kept series keeps its own values
    whole = ModelSeries("m", np.array([0, 1, 2]), keys, values)
    assert per_group_sample(whole, per_group=50) is whole
