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


def test_weight_gradient_fits_use_the_fixed_position_sample_of_the_gradient(random_suite, backend, monkeypatch):
    """The fits of grad.W_out come from `subsample`'s fixed positions of ∂L/∂W_out (computed here by
    Hugging Face), so the same entries are fitted at every checkpoint. A 200-entry sample, so that the
    tiny model's gradient is subsampled at all."""
    from pythia_dynamics.analyses import gradients
    from pythia_dynamics.records import RecordBuilder
    from pythia_dynamics.summaries import GRADIENT_BINS, DistributionSummary

    monkeypatch.setattr(gradients, "FIT_SAMPLES", 200)
    model = load_checkpoint(random_suite, 8, backend=backend).model
    recorded = scalars_of(get_analysis("gradients").run(model, TOKENS))
    hf = GPTNeoXForCausalLM.from_pretrained(random_suite / "step8", attn_implementation="eager")
    logits = hf(TOKENS).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), TOKENS[:, 1:].flatten()).backward()
    # The analysis sees each gradient in the layout its backend trains (HookedTransformer: [d_mlp, d_model];
    # the bridge: Hugging Face's [d_model, d_mlp]); the fixed positions are positions in that layout.
    from pythia_dynamics.installers import family_of_model
    from pythia_dynamics.parameter_names import component_gradients
    from pythia_dynamics.passes import run_chunked_passes

    ours = component_gradients(run_chunked_passes(model, TOKENS, backward=True).grads, family_of_model(model))[("W_out", 1)]
    hf_grad = hf.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.grad
    w_out_grad = hf_grad if ours.shape == hf_grad.shape else hf_grad.T
    torch.testing.assert_close(ours, w_out_grad, atol=1e-6, rtol=1e-4)
    assert w_out_grad.numel() > 200
    builder = RecordBuilder()
    DistributionSummary.of(w_out_grad, GRADIENT_BINS, max_samples=200).write(builder, "x")
    expected = scalars_of(builder.build())
    assert expected[("x", None, "subsampled")] == 1.0
    fit_stats = [stat for (_, _, stat) in expected.index]
    assert len(fit_stats) > 10  # moments, histogram tails and the fits' scalars
    tiny = 1e-5 * expected[("x", None, "std")]  # a mean of ~0 agrees to float rounding, not to 0.1%
    for stat in fit_stats:
        a, b = recorded[("grad.W_out", 1, stat)], expected[("x", None, stat)]
        assert a == pytest.approx(b, rel=1e-3, abs=tiny) or (np.isnan(a) and np.isnan(b)), stat
