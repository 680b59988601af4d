import functools
import logging

import numpy as np
import pytest
import torch
from scipy import stats

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.analyses.weight_distributions import WeightDistributionConfig, weight_distributions
from pythia_dynamics.fits import FAMILIES, QQ_PROBABILITIES, WEIGHT_BINS
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.store import Store
from pythia_dynamics.synthetic import tiny_config, write_random_suite

SCALE = 0.02
# (component, layer) -> (scipy distribution, family, planted shape parameter)
PLANTED = {
    ("W_in", 0): (stats.t(3, 0, SCALE), "student_t", {"nu": 3.0}),
    ("W_out", 0): (stats.gennorm(1.0, 0, SCALE), "gennorm", {"beta": 1.0}),
    ("W_QKV", 0): (stats.logistic(0, SCALE), "logistic", {}),
    ("W_in", 1): (stats.gennorm(1.0, 0, SCALE), "gennorm", {"beta": 1.0}),
    ("W_out", 1): (stats.norm(0, SCALE), "gaussian", {}),
    ("W_QKV", 1): (stats.t(3, 0, SCALE), "student_t", {"nu": 3.0}),
}
HF_NAMES = {  # GPT-NeoX parameter holding each TransformerLens matrix (transposed, or Q/K/V interleaved)
    "W_in": "mlp.dense_h_to_4h.weight",
    "W_out": "mlp.dense_4h_to_h.weight",
    "W_QKV": "attention.query_key_value.weight",
    "W_O": "attention.dense.weight",
}


@pytest.fixture(scope="module")
def planted_suite(tmp_path_factory):
    """d_model 128, d_mlp 512: W_in/W_out have 65,536 entries (fitted on a 50k subsample), W_QKV 49,152.

    Entries are i.i.d., so however TransformerLens rearranges a matrix its distribution is the planted
    one. Layer 1's W_O is all zeros: nothing to fit. Returns the suite and the planted values.
    """
    planted = {}

    def plant(step, model):
        for seed, ((component, layer), (dist, _, _)) in enumerate(PLANTED.items()):
            param = model.gpt_neox.layers[layer].get_parameter(HF_NAMES[component])
            values = torch.from_numpy(dist.rvs(size=tuple(param.shape), random_state=seed)).float()
            param.data.copy_(values)
            planted[(component, layer)] = values.double().numpy().ravel()
        model.gpt_neox.layers[1].attention.dense.weight.data.zero_()

    config = tiny_config(hidden_size=128, intermediate_size=512, num_attention_heads=4)
    root = write_random_suite(tmp_path_factory.mktemp("planted") / "planted", config, [0], edit=plant)
    return root, planted


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def results(planted_suite):
    """backend -> (records, warnings logged): the analysis on the planted model, once per backend."""
    cache = {}

    def run(backend):
        if backend not in cache:
            model = load_checkpoint(planted_suite[0], 0, backend=backend).model
            handler = _Collect()
            logger = logging.getLogger("pythia_dynamics.summaries")
            logger.addHandler(handler)
            try:
                cache[backend] = (weight_distributions(model), handler.messages)
            finally:
                logger.removeHandler(handler)
        return cache[backend]

    return run


def _stat(scalars, component, layer, stat):
    return scalars[(component, layer, stat)]


def test_planted_distributions_are_recovered(results, backend):
    records, warnings = results(backend)
    scalars = records.scalars.set_index(["component", "layer", "stat"])["value"]
    arrays = records.arrays
    for (component, layer), (_, family, shapes) in PLANTED.items():
        value = functools.partial(_stat, scalars, component, layer)
        best_text = arrays.query(f"component == '{component}' and layer == {layer} and name == 'best_family'")
        if family == "gaussian":  # AIC may pick a nested family on Gaussian data; BIC must not
            assert value("best_family_bic_index") == FAMILIES.index("gaussian")
            assert value("student_t_nu") > 30 and abs(value("gennorm_beta") - 2) < 0.1
        else:
            assert value("best_family_index") == FAMILIES.index(family), (component, layer)
            assert list(best_text["text"].item()) == [family]
        for shape, truth in shapes.items():
            assert value(f"{family}_{shape}") == pytest.approx(truth, abs=0.3 if shape == "nu" else 0.1)
        assert value(f"{family}_scale") == pytest.approx(SCALE, rel=0.03)
        n = 65_536 if component in ("W_in", "W_out") else 49_152
        assert value("n_entries") == n
        assert value("n_fit_samples") == min(n, 50_000) and value("subsampled") == float(n > 50_000)
    # The untouched layer-0 W_O is the Gaussian N(0, 0.02) initialisation.
    assert scalars[("W_O", 0, "gaussian_scale")] == pytest.approx(SCALE, rel=0.05)
    # Layer 1's all-zero W_O: moments and histogram, no fits, and a warning saying so.
    zero = scalars.xs(("W_O", 1), level=("component", "layer"))
    assert zero["std"] == 0 and zero["max_abs"] == 0 and "student_t_nu" not in zero.index
    assert warnings == ["W_O layer 1: non-finite entries or no spread; fits skipped"]


def test_moments_and_histograms_cover_every_entry(planted_suite, results, backend):
    records, _ = results(backend)
    scalars = records.scalars.set_index(["component", "layer", "stat"])["value"]
    edges = WEIGHT_BINS.edges()
    for (component, layer), values in planted_suite[1].items():
        value = functools.partial(_stat, scalars, component, layer)
        assert value("mean") == pytest.approx(values.mean(), abs=1e-9)
        assert value("std") == pytest.approx(values.std(), rel=1e-9)
        assert value("skew") == pytest.approx(stats.skew(values), rel=1e-6, abs=1e-9)
        assert value("excess_kurtosis") == pytest.approx(stats.kurtosis(values), rel=1e-9)
        assert value("max_abs") == np.abs(values).max()
        rows = records.arrays.query(f"component == '{component}' and layer == {layer}").set_index("name")
        assert np.array_equal(rows.loc["histogram_edges", "values"], edges)
        assert np.array_equal(rows.loc["histogram", "values"], np.histogram(values, edges)[0])
        assert value("histogram_underflow") == (values < edges[0]).sum() and value("histogram_overflow") == 0
        for name in ("qq_gaussian", "qq_powerlaw"):
            assert list(rows.loc[name, "shape"]) == [len(QQ_PROBABILITIES), 3]
    # Matrices only: no biases or layer norms; W_E and W_U have a null layer.
    components = set(records.scalars["component"])
    assert components == {"W_QKV", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_E", "W_U"}
    assert records.scalars.query("component == 'W_E'")["layer"].isna().all()
    assert records.scalars["head"].isna().all()


def test_records_round_trip_through_the_store(results, backend, tmp_path):
    records, _ = results(backend)
    store = Store(tmp_path / "store", create=True)
    store.write_result("planted", 0, "weight_distributions", records.scalars, records.arrays)
    back = store.scalars(analysis="weight_distributions")
    assert len(back) == len(records.scalars)
    merged = back.merge(records.scalars, on=["component", "layer", "head", "stat"], suffixes=("", "_direct"))
    assert len(merged) == len(back) and np.array_equal(merged["value"], merged["value_direct"], equal_nan=True)
    assert store.array("planted", 0, "weight_distributions", "W_in", "best_family", layer=0).tolist() == ["student_t"]
    qq = store.array("planted", 0, "weight_distributions", "W_QKV", "qq_powerlaw", layer=1)
    assert qq.shape == (len(QQ_PROBABILITIES), 3) and np.array_equal(qq[:, 0], QQ_PROBABILITIES)


def test_small_matrices_are_skipped_and_the_analysis_is_registered(random_suite):
    model = load_checkpoint(random_suite, 0).model  # d_model 32: W_Q, W_K, W_V, W_O have 1,024 entries
    records = weight_distributions(model, config=WeightDistributionConfig(min_entries=2_000, max_samples=2_000))
    assert set(records.scalars["component"]) == {"W_QKV", "W_in", "W_out", "W_E", "W_U"}
    assert records.scalars.query("component == 'W_E' and stat == 'n_fit_samples'")["value"].item() == 2_000
    analysis = get_analysis("weight_distributions")
    assert analysis.needs == "weights" and analysis.fn is weight_distributions


def test_backends_agree(results):
    from pythia_dynamics import compat

    backends = compat.available_backends()
    if len(backends) < 2:
        pytest.skip("one TransformerLens backend installed")
    a, b = (results(backend)[0].scalars.set_index(["component", "layer", "stat"])["value"] for backend in backends[:2])
    assert a.index.equals(b.index)
    assert np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-9, equal_nan=True)
