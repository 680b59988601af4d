import pandas as pd
import pytest
import torch
from transformers import GPTNeoXForCausalLM

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.passes import run_chunked_passes
from pythia_dynamics.synthetic import tiny_config, write_random_suite

TOKENS = torch.randint(0, 384, (6, 16), generator=torch.Generator().manual_seed(0))
OUTLIER_DIM, OUTLIER_SIZE = 13, 40.0


@pytest.fixture(scope="module")
def planted_suite(tmp_path_factory):
    """Block 1's MLP output bias writes a large constant into residual dimension 13."""

    def plant(step, model):
        with torch.no_grad():
            model.gpt_neox.layers[1].mlp.dense_4h_to_h.bias[OUTLIER_DIM] = OUTLIER_SIZE

    return write_random_suite(tmp_path_factory.mktemp("planted") / "suite", tiny_config(), [0], edit=plant)


def scalar(records, component, layer, stat):
    s = records.scalars
    rows = s[(s["component"] == component) & (s["stat"] == stat)]
    rows = rows[rows["layer"].isna()] if layer is None else rows[rows["layer"] == layer]
    return rows["value"].item()


def array(records, component, layer, name):
    a = records.arrays
    return a[(a["component"] == component) & (a["layer"] == layer) & (a["name"] == name)]["values"].item()


def test_planted_outlier_is_found_at_its_block_and_dimension(planted_suite, backend):
    model = load_checkpoint(planted_suite, 0, backend=backend).model
    records = get_analysis("residual_outliers").run(model, TOKENS)
    assert array(records, "hook_resid_post", 1, "top_dims")[0] == OUTLIER_DIM
    assert scalar(records, "hook_resid_post", 1, "max_abs") == pytest.approx(OUTLIER_SIZE, abs=3.0)
    assert scalar(records, "hook_resid_post", 1, "top_dim_argmax_fraction") == 1.0
    # Before block 1 writes it, nothing stands out.
    assert scalar(records, "hook_resid_pre", 1, "max_abs") < 5.0
    assert array(records, "hook_resid_pre", 1, "top_dims")[0] != OUTLIER_DIM or scalar(records, "hook_resid_pre", 1, "top_dim_argmax_fraction") < 0.5


def test_chunked_statistics_equal_one_big_batch(planted_suite, backend):
    model = load_checkpoint(planted_suite, 0, backend=backend).model
    whole = get_analysis("residual_outliers").run(model, TOKENS)
    chunked = get_analysis("residual_outliers").run(model, TOKENS, chunk_size=4)
    pd.testing.assert_frame_equal(whole.scalars, chunked.scalars, rtol=1e-9)
    for a, b in zip(whole.arrays["values"], chunked.arrays["values"]):
        assert a.tolist() == pytest.approx(b.tolist(), rel=1e-9)


def test_hooked_residual_equals_hugging_face_hidden_states(planted_suite, backend):
    model = load_checkpoint(planted_suite, 0, backend=backend).model
    captured = {}
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(2)] + ["blocks.1.hook_resid_post", "ln_final.hook_normalized"]
    run_chunked_passes(model, TOKENS, hooks=hooks, on_chunk=lambda c: captured.update(c.activations))
    hf = GPTNeoXForCausalLM.from_pretrained(planted_suite / "step0", attn_implementation="eager").eval()
    with torch.no_grad():
        states = hf(TOKENS, output_hidden_states=True).hidden_states
    for layer in range(2):
        torch.testing.assert_close(captured[f"blocks.{layer}.hook_resid_pre"], states[layer], atol=1e-5, rtol=1e-5)
    # HF's last hidden state has the final layer norm (with its affine weights) applied.
    final = hf.gpt_neox.final_layer_norm
    with torch.no_grad():
        torch.testing.assert_close(final(captured["blocks.1.hook_resid_post"]), states[2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(captured["ln_final.hook_normalized"] * final.weight + final.bias, states[2], atol=1e-4, rtol=1e-4)
