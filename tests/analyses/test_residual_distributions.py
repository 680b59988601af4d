import numpy as np
import pandas as pd
import pytest
import torch
from transformers import GPTNeoXForCausalLM

from pythia_dynamics.analyses import get_analysis
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.summaries import ACTIVATION_BINS

TOKENS = torch.randint(0, 384, (6, 16), generator=torch.Generator().manual_seed(2))


def scalars_of(records):
    return records.scalars.set_index(["component", "layer", "stat"])["value"]


def test_chunked_equals_whole_batch_and_counts_every_value(random_suite, backend):
    model = load_checkpoint(random_suite, 8, backend=backend).model
    whole = get_analysis("residual_distributions").run(model, TOKENS)
    chunked = get_analysis("residual_distributions").run(model, TOKENS, chunk_size=4)
    a, b = scalars_of(whole), scalars_of(chunked)
    pd.testing.assert_series_equal(a, b, rtol=1e-6)
    counts = whole.arrays.query("name == 'histogram' and component == 'hook_resid_post' and layer == 1")["values"].item()
    n = 6 * 16 * model.cfg.d_model
    assert counts.sum() + a[("hook_resid_post", 1, "histogram_underflow")] + a[("hook_resid_post", 1, "histogram_overflow")] == n
    assert a[("hook_resid_post", 1, "n_entries")] == n


def test_moments_and_histogram_match_numpy_on_hugging_face_states(random_suite):
    model = load_checkpoint(random_suite, 8).model
    records = get_analysis("residual_distributions").run(model, TOKENS)
    hf = GPTNeoXForCausalLM.from_pretrained(random_suite / "step8", attn_implementation="eager")
    with torch.no_grad():
        resid = hf(TOKENS, output_hidden_states=True).hidden_states[1].double().numpy().ravel()  # block 1's input
    from scipy import stats

    s = scalars_of(records)
    assert s[("hook_resid_pre", 1, "excess_kurtosis")] == pytest.approx(stats.kurtosis(resid), rel=1e-4)
    assert s[("hook_resid_pre", 1, "std")] == pytest.approx(resid.std(), rel=1e-5)
    counts = records.arrays.query("name == 'histogram' and component == 'hook_resid_pre' and layer == 1")["values"].item()
    assert np.array_equal(counts, np.histogram(resid, ACTIVATION_BINS.edges())[0])


def test_gradient_records(random_suite, backend):
    model = load_checkpoint(random_suite, 8, backend=backend).model
    whole = scalars_of(get_analysis("gradients").run(model, TOKENS))
    chunked = scalars_of(get_analysis("gradients").run(model, TOKENS, chunk_size=5))
    for key in [("W_out", 1, "grad_frobenius_norm"), ("grad.W_out", 1, "excess_kurtosis"),
                ("grad.hook_resid_post", 0, "max_abs"), ("grad.hook_resid_pre", 1, "std")]:  # fmt: skip
        assert whole[key] == pytest.approx(chunked[key], rel=1e-4), key
    hf = GPTNeoXForCausalLM.from_pretrained(random_suite / "step8", attn_implementation="eager")
    logits = hf(TOKENS).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), TOKENS[:, 1:].flatten()).backward()
    expected = hf.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.grad.norm().item()
    assert whole[("W_out", 1, "grad_frobenius_norm")] == pytest.approx(expected, rel=1e-4)
