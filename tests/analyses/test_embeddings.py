import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.analyses import embeddings as embeddings_module
from pythia_dynamics.analyses.embeddings import embeddings, token_correlation, token_norms
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.store import row_to_numpy
from pythia_dynamics.synthetic import tiny_config, write_random_suite

D_MODEL = 32  # tiny_config


def group_directions() -> tuple[np.ndarray, np.ndarray]:
    """Two directions with zero mean over d_model (so centring keeps them) and orthogonal to each other."""
    a = np.repeat([1.0, -1.0], D_MODEL // 2)
    b = np.tile([1.0, -1.0], D_MODEL // 2)
    return a, b


def plant_two_groups(step, model):
    """Tokens 0..127 along one direction, 128..255 along another, plus small noise; others untouched."""
    rng = np.random.default_rng(11)
    a, b = group_directions()
    rows = np.concatenate([np.tile(a, (128, 1)), np.tile(b, (128, 1))]) * 0.05
    rows += rng.standard_normal(rows.shape) * 0.005
    with torch.no_grad():
        model.gpt_neox.embed_in.weight[:256] = torch.tensor(rows, dtype=torch.float32)


@pytest.fixture(scope="module")
def grouped_suite(tmp_path_factory):
    return write_random_suite(tmp_path_factory.mktemp("grouped") / "grouped", tiny_config(), [0], edit=plant_two_groups)


def array(records, component, name) -> np.ndarray:
    rows = records.arrays[(records.arrays["component"] == component) & (records.arrays["name"] == name)]
    assert len(rows) == 1, f"{component} {name}: {len(rows)} rows"
    return row_to_numpy(rows.iloc[0])


def scalar(records, component, stat) -> float:
    rows = records.scalars[(records.scalars["component"] == component) & (records.scalars["stat"] == stat)]
    return rows["value"].item()


def test_planted_groups_correlate_within_and_not_across(grouped_suite, backend):
    model = load_checkpoint(grouped_suite, 0, backend=backend).model
    records = embeddings(model)
    corr = array(records, "W_E", "token_correlation")
    assert corr.shape == (256, 256)
    within = np.concatenate([corr[:128, :128].ravel(), corr[128:, 128:].ravel()])
    across = corr[:128, 128:]
    assert within.min() > 0.95 and np.abs(across).max() < 0.15 and abs(across.mean()) < 0.01
    # Pearson correlation between the token vectors: numpy's, to float32 precision.
    stored = load_file(grouped_suite / "step0" / "model.safetensors")
    w_e = stored["gpt_neox.embed_in.weight"].astype(np.float64)
    np.testing.assert_allclose(corr, np.corrcoef(w_e[:256]), atol=1e-6)
    w_u = stored["embed_out.weight"].astype(np.float64)  # [d_vocab, d_model]: the columns of W_U
    np.testing.assert_allclose(array(records, "W_U", "token_correlation"), np.corrcoef(w_u[:256]), atol=1e-6)
    assert scalar(records, "W_E", "n_tokens_correlated") == 256


def test_norm_statistics_equal_numpys(grouped_suite, backend):
    records = get_analysis("embeddings").run(load_checkpoint(grouped_suite, 0, backend=backend).model)
    stored = load_file(grouped_suite / "step0" / "model.safetensors")
    for component, key in (("W_E", "gpt_neox.embed_in.weight"), ("W_U", "embed_out.weight")):
        norms = np.linalg.norm(stored[key].astype(np.float64), axis=1)
        assert scalar(records, component, "token_norm_mean") == pytest.approx(norms.mean(), rel=1e-6)
        assert scalar(records, component, "token_norm_median") == pytest.approx(np.median(norms), rel=1e-6)
        assert scalar(records, component, "token_norm_max") == pytest.approx(norms.max(), rel=1e-6)
        np.testing.assert_allclose(array(records, component, "token_norms"), norms[:256], rtol=1e-6)
    assert records.scalars["layer"].isna().all() and records.scalars["head"].isna().all()


def test_a_vocabulary_under_256_uses_every_token_and_says_so(tmp_path):
    suite = write_random_suite(tmp_path / "small-vocab", tiny_config(vocab_size=100), [0])
    records = embeddings(load_checkpoint(suite, 0).model)
    assert array(records, "W_E", "token_correlation").shape == (100, 100)
    assert scalar(records, "W_E", "n_tokens_correlated") == 100


def test_token_strings_come_from_the_tokenizer_and_only_a_real_one(tiny_suite, random_suite, backend):
    records = embeddings(load_checkpoint(tiny_suite, 40, backend=backend).model)
    names = array(records, "W_E", "token_strings")
    assert names.shape == (256,) and names[65] == "A" and names[48] == "0"  # the mini suite's ids are bytes
    # No tokenizer in the random suite (the bridge boots a two-token placeholder): no strings recorded.
    records = embeddings(load_checkpoint(random_suite, 0, backend=backend).model)
    assert "token_strings" not in set(records.arrays["name"])


def test_a_constant_vector_has_undefined_correlation():
    vectors = torch.tensor([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [3.0, 1.0, 0.0]])
    corr = token_correlation(vectors).numpy()
    assert np.isnan(corr[1]).all() and np.isnan(corr[:, 1]).all()
    assert corr[0, 2] == pytest.approx(np.corrcoef(vectors[[0, 2]].numpy())[0, 1])


def test_token_norms_read_rows_or_columns_in_blocks(monkeypatch):
    monkeypatch.setattr(embeddings_module, "_BLOCK_ELEMENTS", 64)  # many blocks
    vectors = torch.randn(300, 24, generator=torch.Generator().manual_seed(0))
    expected = np.linalg.norm(vectors.double().numpy(), axis=1)
    # W_E holds token vectors as rows; W_U as columns, so W_U.T is a transposed view.
    for layout in (vectors, vectors.T.contiguous().T):
        got = token_norms(layout)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)
