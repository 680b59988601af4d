import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import pythia_dynamics.weights
from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.analyses.distances import squared_distances
from pythia_dynamics.analyses.norms import moments
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep
from pythia_dynamics.weights import component_weights, float64_blocks


@pytest.fixture
def small_blocks(monkeypatch):
    """Sums over many small tiles: what a 50304 x 512 matrix gets, on test-sized tensors."""
    monkeypatch.setattr(pythia_dynamics.weights, "BLOCK_ELEMENTS", 50)


def test_distances_equal_numpy_on_the_checkpoint_files(random_suite, tmp_path, backend):
    sweep(random_suite, tmp_path / "s", analyses="weight_distances", backend=backend, progress=False)
    scalars = Store(tmp_path / "s").scalars(analysis="weight_distances")
    files = {s: load_file(random_suite / f"step{s}" / "model.safetensors") for s in (0, 4, 8)}
    name = "gpt_neox.layers.1.mlp.dense_h_to_4h.weight"
    w0, w4, w8 = (files[s][name].astype(np.float64) for s in (0, 4, 8))

    def value(step, stat, component="W_in", layer=1):
        query = f"step == {step} and component == '{component}' and layer == {layer} and stat == '{stat}'"
        return scalars.query(query)["value"].item()

    assert value(4, "distance_from_initial") == pytest.approx(np.linalg.norm(w4 - w0), rel=1e-6)
    assert value(4, "relative_distance_from_initial") == pytest.approx(np.linalg.norm(w4 - w0) / np.linalg.norm(w0), rel=1e-6)
    assert value(4, "distance_to_final") == pytest.approx(np.linalg.norm(w4 - w8), rel=1e-6)
    # W_QKV is GPT-NeoX's query_key_value, columns permuted: the same distances.
    qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
    q0, q4 = (files[s][qkv].astype(np.float64) for s in (0, 4))
    assert value(4, "distance_from_initial", "W_QKV", 0) == pytest.approx(np.linalg.norm(q4 - q0), rel=1e-12)
    assert value(0, "distance_from_initial") == 0 and value(8, "distance_to_final") == 0
    # step 1 is a copy of step 0 in this suite
    assert value(1, "distance_from_initial") == 0


def test_zero_initial_weights_give_nan_relative_distance(random_suite):
    model = load_checkpoint(random_suite, 4).model
    references = {"initial": {k: v * 0 for k, v in component_weights(model).items()}, "final": component_weights(model)}
    records = get_analysis("weight_distances").run(model, references=references)
    rel = records.scalars.query("stat == 'relative_distance_from_initial'")["value"]
    assert rel.map(math.isnan).all()
    with pytest.raises(ValueError, match="compares against reference checkpoints"):
        get_analysis("weight_distances").run(model)


def test_distances_pair_the_same_entries_whatever_the_layouts(small_blocks):
    # The model's W_in can be a contiguous copy while the stored reference is a transposed view.
    rng = np.random.default_rng(0)
    w, first, last = (rng.standard_normal((24, 36)).astype(np.float32) for _ in range(3))
    as_view = lambda a: torch.tensor(a.T.copy()).T  # noqa: E731 - same values, transposed layout
    from_initial, initial_norm, to_final = squared_distances(torch.tensor(w), as_view(first), as_view(last))
    w64, first64, last64 = (a.astype(np.float64) for a in (w, first, last))
    assert from_initial == pytest.approx(np.sum((w64 - first64) ** 2), rel=1e-13)
    assert initial_norm == pytest.approx(np.sum(first64**2), rel=1e-13)
    assert to_final == pytest.approx(np.sum((w64 - last64) ** 2), rel=1e-13)
    assert squared_distances(as_view(w), torch.tensor(w), torch.tensor(w))[::2] == (0.0, 0.0)


def test_float64_blocks_cover_every_entry_once_in_tiles(small_blocks):
    x = torch.arange(7 * 9 * 5, dtype=torch.float32).reshape(7, 9, 5)
    for tensor in (x, x.permute(2, 0, 1), x[:, 1:8:2]):
        seen, n_blocks = [], 0
        for (block,) in float64_blocks(tensor):  # a reused buffer: read each block before the next
            assert block.dtype == torch.float64 and block.is_contiguous()
            seen += block.view(-1).tolist()
            n_blocks += 1
        assert n_blocks > 1 and sorted(seen) == sorted(tensor.reshape(-1).tolist())


def test_weight_norms_equal_numpys_two_pass_statistics(small_blocks):
    rng = np.random.default_rng(1)
    cases = {
        "gaussian": rng.standard_normal((40, 30)) * 0.02,
        # A layer norm's weight early in training: one-pass sums would lose most of the std's digits.
        "near constant": 1.0 + rng.standard_normal(512) * 1e-6,
        "constant": np.ones(512),
        "offset": rng.standard_normal((20, 30)) - 3.0,
    }
    for name, values in cases.items():
        tensor = torch.tensor(values, dtype=torch.float32)
        exact = tensor.double().numpy()
        got = moments(tensor if tensor.dim() == 1 else tensor.T.contiguous().T)
        assert got["frobenius_norm"] == pytest.approx(np.sqrt(np.sum(exact**2)), rel=1e-13), name
        assert got["mean"] == pytest.approx(exact.mean(), rel=1e-13, abs=1e-16), name
        assert got["std"] == pytest.approx(exact.std(), rel=1e-9, abs=1e-16), name
        assert got["max_abs"] == np.abs(exact).max(), name


def test_weight_norms_analysis_equals_numpy_on_the_checkpoint_file(random_suite, backend):
    records = get_analysis("weight_norms").run(load_checkpoint(random_suite, 4, backend=backend).model)
    w = load_file(random_suite / "step4" / "model.safetensors")["embed_out.weight"].astype(np.float64)  # W_U^T
    scalars = records.scalars[records.scalars["component"] == "W_U"].set_index("stat")["value"]
    assert scalars["frobenius_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-12)
    assert scalars["mean"] == pytest.approx(w.mean(), rel=1e-9)
    assert scalars["std"] == pytest.approx(w.std(), rel=1e-12)
    assert scalars["max_abs"] == np.abs(w).max()
