import numpy as np
import pytest

from pythia_dynamics.figures import SectionInputs, render_section
from pythia_dynamics.figures.embeddings import byte_label
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep

STEPS = [0, 1, 40]  # "first:2,last" of the tiny suite


@pytest.fixture(scope="module")
def store(tiny_suite, tmp_path_factory):
    path = tmp_path_factory.mktemp("embeddings-report") / "store"
    sweep(tiny_suite, path, steps="first:2,last", analyses="embeddings", progress=False)
    return Store(path)


def embeddings_section(store):
    scalars, arrays = store.scalars(analysis="embeddings"), store.arrays(analysis="embeddings")
    return render_section("embeddings", SectionInputs(scalars, arrays, {m: store.source_meta(m) for m in store.models()}))


def test_correlation_heatmaps_have_a_step_slider_and_the_stored_values(store):
    section = embeddings_section(store)
    heatmaps = [f for f in section.figures if f.layout.sliders]
    assert ["W_E[t]" in heatmaps[0].layout.title.text, "W_U[:, t]" in heatmaps[1].layout.title.text] == [True, True]
    for fig in heatmaps:
        assert [s.label for s in fig.layout.sliders[0].steps] == [str(s) for s in STEPS]
        assert [f.name for f in fig.frames] == [str(s) for s in STEPS]
    z = heatmaps[0].frames[-1].data[0].z
    stored = store.array("tiny-test", 40, "embeddings", "W_E", "token_correlation")
    assert z.shape == (256, 256)
    np.testing.assert_allclose(np.asarray(z) / 100, stored, atol=0.005 + 1e-9)
    labels = list(heatmaps[0].frames[-1].data[0].x)
    assert labels[65] == "65:A" and labels[48] == "48:0"  # the tokenizer's names for the mini suite's byte ids
    assert "tokenizer's own token names" in " ".join(section.notes)


def test_norm_curves_over_training(store):
    fig = next(f for f in embeddings_section(store).figures if "per-token norms" in (f.layout.title.text or ""))
    assert {t.name for t in fig.data} == {"mean", "median", "max"} and len(fig.data) == 6  # W_E and W_U panels
    assert all(list(t.x) == STEPS for t in fig.data) and fig.layout.updatemenus
    mean = store.scalars(analysis="embeddings", component="W_E", stat="token_norm_mean").sort_values("step")
    np.testing.assert_allclose(fig.data[0].y, mean["value"])


def test_without_token_strings_ids_are_labelled_as_bytes(store):
    scalars, arrays = store.scalars(analysis="embeddings"), store.arrays(analysis="embeddings")
    section = render_section("embeddings", SectionInputs(scalars, arrays[arrays["name"] != "token_strings"], {}))
    labels = list(section.figures[0].data[0].x)
    assert labels[65] == "65:A" and labels[10] == "10:\\x0a" and labels[32] == "32:␠"
    assert "not for Pythia" in " ".join(section.notes)
    assert byte_label(200) == "200:\\xc8"
