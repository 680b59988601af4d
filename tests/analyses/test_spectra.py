import logging

import numpy as np
import powerlaw
import pytest
import torch
from safetensors.numpy import load_file

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.analyses import spectra as spectra_module
from pythia_dynamics.analyses.spectra import (
    GRAM_MAX_CONDITION,
    _gram_torch,
    _singular_values_torch,
    gram,
    marchenko_pastur_median,
    singular_values,
    spectra,
    spectral_matrices,
    spectrum_stats,
)
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.synthetic import tiny_config, write_random_suite


def random_orthonormal(rng, n: int, k: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


def power_law_matrix(n: int, m: int, k: float, seed: int = 0) -> np.ndarray:
    """U diag(σ) Vᵀ with random orthonormal U, V and σ_i = i^-k, i = 1..m."""
    rng = np.random.default_rng(seed)
    sigma = np.arange(1, m + 1, dtype=np.float64) ** -k
    return random_orthonormal(rng, n, m) @ np.diag(sigma) @ random_orthonormal(rng, m, m).T


def gaussian_with_spikes(strengths, n=1000, m=300, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, m))
    u, v = random_orthonormal(rng, n, len(strengths) or 1), random_orthonormal(rng, m, len(strengths) or 1)
    for i, theta in enumerate(strengths):
        w += theta * np.outer(u[:, i], v[:, i])
    return w


def test_singular_values_equal_numpys_in_either_orientation():
    w = np.random.default_rng(1).standard_normal((70, 40))
    expected = np.linalg.svd(w, compute_uv=False)
    for matrix in (w, w.T):
        got = singular_values(torch.tensor(matrix, dtype=torch.float32))
        assert got.dtype == torch.float64 and got.shape == (40,)
        assert bool(torch.all(got[:-1] >= got[1:]))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)  # float32 input: its rounding only


def planted_spectrum(n: int, m: int, condition: float, seed: int = 0) -> np.ndarray:
    """U diag(σ) Vᵀ with σ spaced log-evenly from 1 down to 1/condition."""
    rng = np.random.default_rng(seed)
    sigma = np.logspace(0, -np.log10(condition), m)
    return (random_orthonormal(rng, n, m) * sigma) @ random_orthonormal(rng, m, m).T


def assert_within_gram_tolerance(got: np.ndarray, exact: np.ndarray):
    # The module docstring's bound: |σ̂_i − σ_i| ≤ 1e-13 σ_1² / σ_i.
    scaled_error = np.abs(got - exact) * exact / exact[0] ** 2
    assert scaled_error.max() <= 1e-13, scaled_error.max()


@pytest.fixture
def small_gram_blocks(monkeypatch):
    """Make the test matrices take the large-matrix route: Gram matrices accumulated over many row blocks."""
    monkeypatch.setattr(spectra_module, "_WHOLE_GRAM_ELEMENTS", 0)
    monkeypatch.setattr(spectra_module, "_GRAM_BLOCK_ELEMENTS", 70 * 40)  # 70 rows of 40


@pytest.mark.parametrize("blocks", ["whole", "row blocks"])
@pytest.mark.parametrize("condition", [1.0 + 1e-9, 30.0, 1e3, 0.9 * GRAM_MAX_CONDITION])
def test_gram_route_is_within_its_documented_tolerance_of_svdvals(condition, blocks, request):
    if blocks == "row blocks":
        request.getfixturevalue("small_gram_blocks")
    w = planted_spectrum(600, 40, condition, seed=int(condition) % 7)
    exact = torch.linalg.svdvals(torch.tensor(w)).numpy()
    tall = torch.tensor(w)
    # The last is laid out as W_U is: a transposed view of a contiguous matrix.
    views = {"tall": tall, "wide": tall.T.contiguous(), "transposed view": tall.T.contiguous().T}
    for name, matrix in views.items():
        assert_within_gram_tolerance(singular_values(matrix).numpy(), exact)  # scipy (CPU) route
        oriented = matrix.T if name == "wide" else matrix  # the torch route takes tall matrices
        assert_within_gram_tolerance(_singular_values_torch(oriented[None])[0].numpy(), exact)
    # The torch route batches: the per-head matrices go through it together.
    batch = torch.stack([tall, torch.tensor(planted_spectrum(600, 40, condition, seed=11))])
    got = singular_values(batch).numpy()
    assert got.shape == (2, 40)
    assert_within_gram_tolerance(got[0], exact)


def test_scipy_and_torch_gram_matrices_agree_in_either_layout(small_gram_blocks):
    w = torch.tensor(np.random.default_rng(3).standard_normal((500, 40)), dtype=torch.float32)
    exact = w.double().T @ w.double()
    tolerance = dict(rtol=1e-14, atol=1e-14 * float(exact.abs().max()))
    for matrix in (w, w.T.contiguous().T):
        torch.testing.assert_close(torch.tril(gram(matrix)), torch.tril(exact), **tolerance)  # dsyrk: lower triangle
        torch.testing.assert_close(_gram_torch(matrix[None])[0], exact, **tolerance)


@pytest.mark.parametrize("route", ["scipy", "torch"])
def test_ill_conditioned_matrices_fall_back_to_an_svd(route):
    w = torch.tensor(planted_spectrum(300, 30, condition=1e7))  # well past GRAM_MAX_CONDITION
    exact = torch.linalg.svdvals(w).numpy()
    # The Gram route itself would be far off for the smallest values: the reason for the fallback.
    naive = np.sqrt(np.clip(np.linalg.eigvalsh(w.numpy().T @ w.numpy())[::-1], 0, None))
    assert np.max(np.abs(naive - exact) / exact) > 1e-4
    if route == "scipy":
        got = singular_values(w).numpy()
    else:  # a batch where only one matrix needs the SVD
        well = torch.tensor(planted_spectrum(300, 30, condition=10.0))
        got_all = _singular_values_torch(torch.stack([well, w]))
        assert_within_gram_tolerance(got_all[0].numpy(), torch.linalg.svdvals(well).numpy())
        got = got_all[1].numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-15)
    zero = torch.zeros(50, 20)
    assert singular_values(zero).tolist() == [0.0] * 20 and singular_values(zero[None])[0].tolist() == [0.0] * 20


def test_stable_rank_of_rank_one_is_one_and_of_orthonormal_columns_is_their_number():
    rng = np.random.default_rng(2)
    _, stats = spectrum_stats(torch.tensor(np.outer(rng.standard_normal(50), rng.standard_normal(30))))
    assert stats["stable_rank"] == pytest.approx(1.0, rel=1e-9)
    assert stats["n_outlier_singular_values"] == 1  # beyond a bulk of rounding noise: the rank
    _, stats = spectrum_stats(torch.tensor(random_orthonormal(rng, 50, 30)))
    assert stats["stable_rank"] == pytest.approx(30.0, rel=1e-9) and stats["spectral_norm"] == pytest.approx(1.0)


@pytest.mark.parametrize("q", [1.0, 0.3, 0.0625])
def test_marchenko_pastur_median_matches_a_simulated_gaussian_matrix(q):
    n = 1200
    w = np.random.default_rng(3).standard_normal((n, int(q * n)))
    simulated = np.median(np.linalg.svd(w, compute_uv=False) ** 2 / n)
    assert marchenko_pastur_median(q) == pytest.approx(simulated, rel=0.01)


def test_gaussian_matrix_has_no_outliers_and_planted_spikes_are_counted():
    _, plain = spectrum_stats(torch.tensor(gaussian_with_spikes([])))
    assert plain["n_outlier_singular_values"] == 0
    assert plain["mp_noise_std"] == pytest.approx(1.0, rel=0.02)  # the entries' standard deviation
    assert plain["mp_edge"] == pytest.approx(np.sqrt(1000) + np.sqrt(300), rel=0.02)
    assert plain["mp_edge"] < plain["mp_threshold"] < 1.05 * plain["mp_edge"]
    # Spikes of strength 100 and 150 (the edge is ~49; BBP puts the spiked σ at ~106 and ~153).
    _, one = spectrum_stats(torch.tensor(gaussian_with_spikes([100.0])))
    _, two = spectrum_stats(torch.tensor(gaussian_with_spikes([100.0, 150.0])))
    assert one["n_outlier_singular_values"] == 1 and two["n_outlier_singular_values"] == 2
    # The median estimate of the noise scale ignores the spikes; mean(w²) would not.
    assert two["mp_noise_std"] == pytest.approx(plain["mp_noise_std"], rel=0.01)


def test_heavy_tailed_but_random_entries_have_no_outliers():
    w = np.random.default_rng(4).logistic(size=(1000, 300)) * 0.02
    _, stats = spectrum_stats(torch.tensor(w))
    assert stats["n_outlier_singular_values"] == 0
    assert stats["mp_noise_std"] == pytest.approx(w.std(), rel=0.02)


@pytest.mark.parametrize("k", [0.25, 0.5, 1.0])
def test_power_law_spectrum_gets_its_exponent_back(k):
    # σ_i ∝ i^-k => λ_i = σ_i² ∝ i^-2k => P(Λ > λ) ∝ λ^(-1/2k) => density ∝ λ^-(1 + 1/2k).
    n, m = 1000, 300
    _, stats = spectrum_stats(torch.tensor(power_law_matrix(n, m, k)))
    assert stats["powerlaw_alpha"] == pytest.approx(1 + 1 / (2 * k), abs=0.05)
    assert stats["powerlaw_n_tail"] > m / 2  # the whole spectrum is a power law, so most of it is tail


def weightwatcher_fit(w: np.ndarray):
    ww = pytest.importorskip("weightwatcher", reason="required tool missing: weightwatcher (the test extra)")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    layer = torch.nn.Linear(w.shape[0], w.shape[1], bias=False, dtype=torch.float64)
    layer.weight.data = torch.tensor(w.T)
    return ww.WeightWatcher(model=torch.nn.Sequential(layer)).analyze(plot=False).iloc[0]


# WeightWatcher 0.7.7 reads powerlaw's deprecated `sigma` and passes pandas a dict: their warnings, not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Passing a dict to DataFrame.from_records")
@pytest.mark.parametrize(
    "name, matrix",
    [
        ("power law k=0.5", lambda: power_law_matrix(1000, 300, 0.5)),
        ("power law k=1", lambda: power_law_matrix(1000, 300, 1.0, seed=1)),
        ("gaussian", lambda: gaussian_with_spikes([])),
        ("student-t 3", lambda: np.random.default_rng(5).standard_t(3, size=(800, 200))),
    ],
)
def test_power_law_fit_agrees_with_weightwatcher(name, matrix):
    w = matrix()
    _, ours = spectrum_stats(torch.tensor(w))
    theirs = weightwatcher_fit(w)
    assert ours["powerlaw_alpha"] == pytest.approx(theirs["alpha"], rel=1e-6)
    assert ours["powerlaw_ks"] == pytest.approx(theirs["D"], rel=1e-5, abs=1e-8)
    # WeightWatcher's eigenvalues are σ², ours σ²/N.
    assert ours["powerlaw_xmin"] * max(w.shape) == pytest.approx(theirs["xmin"], rel=1e-6)
    assert ours["powerlaw_n_tail"] == theirs["num_pl_spikes"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("k", [0.5, 1.0])
def test_power_law_fit_agrees_with_the_powerlaw_package_on_a_power_law(k):
    w = power_law_matrix(1000, 300, k)
    _, ours = spectrum_stats(torch.tensor(w))
    theirs = powerlaw.Fit(np.linalg.svd(w, compute_uv=False) ** 2 / 1000, discrete=False, verbose=False)
    assert ours["powerlaw_xmin"] == pytest.approx(theirs.xmin, rel=1e-6) and ours["powerlaw_n_tail"] == theirs.n_tail
    # k = 0.5: alpha = 2, which powerlaw 2.0 computes in closed form, as we do; k = 1: alpha = 1.5, at the
    # edge of that range, where it maximises the likelihood numerically (to ~1e-4).
    assert ours["powerlaw_alpha"] == pytest.approx(theirs.alpha, rel=1e-9 if k == 0.5 else 1e-3)


def test_too_few_eigenvalues_give_nan_not_a_fit():
    # 19 nonzero eigenvalues (the 20th is an exact zero, dropped): below MIN_EIGENVALUES_FOR_FIT
    w = power_law_matrix(100, 20, 0.5)
    w[:, -1] = 0.0
    _, stats = spectrum_stats(torch.tensor(w))
    assert np.isnan(stats["powerlaw_alpha"]) and np.isnan(stats["powerlaw_xmin"]) and stats["powerlaw_n_tail"] == 0
    _, stats = spectrum_stats(torch.tensor(power_law_matrix(100, 20, 0.5)))
    assert stats["powerlaw_n_tail"] >= 2


PLANTED_LAYER, SPIKE = 1, 1.0  # tiny config: entries N(0, 0.02²), W_QKV 32 × 96, bulk edge ≈ 0.31


def plant_qkv_spike(step, model):
    weight = model.gpt_neox.layers[PLANTED_LAYER].attention.query_key_value.weight  # [3·d_model, d_model]
    rng = np.random.default_rng(7)
    u, v = rng.standard_normal(weight.shape[0]), rng.standard_normal(weight.shape[1])
    spike = SPIKE * np.outer(u / np.linalg.norm(u), v / np.linalg.norm(v))
    with torch.no_grad():
        weight += torch.tensor(spike, dtype=weight.dtype)


@pytest.fixture(scope="module")
def spiked_suite(tmp_path_factory):
    return write_random_suite(tmp_path_factory.mktemp("spiked") / "spiked", tiny_config(), [0], edit=plant_qkv_spike)


def test_planted_qkv_spike_is_one_outlier_in_its_layer_only(spiked_suite, backend):
    model = load_checkpoint(spiked_suite, 0, backend=backend).model
    records = spectra(model)
    scalars = records.scalars
    outliers = scalars[scalars["stat"] == "n_outlier_singular_values"]
    qkv = outliers[outliers["component"] == "W_QKV"].set_index("layer")["value"]
    assert qkv.to_dict() == {0: 0.0, 1: 1.0}
    # Nothing else in the untouched layer, nor any other whole matrix anywhere, leaves the bulk.
    untouched = outliers[(outliers["layer"] == 0) | (outliers["head"].isna() & (outliers["component"] != "W_QKV"))]
    assert (untouched["value"] == 0).all(), untouched[untouched["value"] > 0]
    # The fused W_QKV view permutes query_key_value's columns: the same singular values.
    stored = load_file(spiked_suite / "step0" / "model.safetensors")
    qkv = stored[f"gpt_neox.layers.{PLANTED_LAYER}.attention.query_key_value.weight"].astype(np.float64)
    expected = np.linalg.svd(qkv, compute_uv=False)
    arrays = records.arrays
    row = arrays[(arrays["component"] == "W_QKV") & (arrays["layer"] == PLANTED_LAYER) & (arrays["name"] == "singular_values")]
    np.testing.assert_allclose(row["values"].item(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("heads_per_batch", [None, 5])
def test_every_matrix_and_head_is_covered_once(random_suite, backend, heads_per_batch, monkeypatch):
    model = load_checkpoint(random_suite, 0, backend=backend).model
    cfg = model.cfg
    if heads_per_batch:  # per-head matrices decomposed a few at a time, batches straddling layers
        monkeypatch.setattr(spectra_module, "_HEAD_BATCH_ELEMENTS", heads_per_batch * cfg.d_model * cfg.d_head)
    keys = set(spectral_matrices(model))
    per_layer = {"W_QKV", "W_O", "W_in", "W_out"}
    expected = {(c, l, None) for c in per_layer for l in range(cfg.n_layers)}
    expected |= {(c, l, h) for c in ("W_Q", "W_K", "W_V", "W_O") for l in range(cfg.n_layers) for h in range(cfg.n_heads)}
    expected |= {("W_E", None, None), ("W_U", None, None)}
    assert keys == expected
    records = get_analysis("spectra").run(model)
    assert len(records.arrays) == len(expected)
    assert not records.scalars.duplicated(["component", "layer", "head", "stat"]).any()
    # Each stored spectrum is its own matrix's, per head too (they are computed in batches).
    arrays = records.arrays
    for (component, layer, head), matrix in spectral_matrices(model).items():
        pick = arrays["component"] == component
        pick &= arrays["layer"].isna() if layer is None else arrays["layer"] == layer
        pick &= arrays["head"].isna() if head is None else arrays["head"] == head
        (stored,) = arrays[pick & (arrays["name"] == "singular_values")]["values"]
        assert_within_gram_tolerance(stored, torch.linalg.svdvals(matrix.double()).numpy())
    # d_head = 8 < 20 eigenvalues: per-head power-law fits are NaN, whole matrices are fitted.
    alpha = records.scalars[records.scalars["stat"] == "powerlaw_alpha"]
    assert alpha[alpha["head"].notna()]["value"].isna().all() and alpha[alpha["head"].isna()]["value"].notna().all()
