import numpy as np
import pytest
import torch
from transformers import GPTNeoXForCausalLM

from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.parameter_names import component_gradients
from pythia_dynamics.passes import run_chunked_passes

TOKENS = torch.randint(0, 384, (5, 12), generator=torch.Generator().manual_seed(1))
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]


def plain_pytorch_grads(step_dir):
    hf = GPTNeoXForCausalLM.from_pretrained(step_dir, attn_implementation="eager")
    logits = hf(TOKENS).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), TOKENS[:, 1:].flatten())
    loss.backward()
    return loss.item(), {name: p.grad for name, p in hf.named_parameters()}


def test_gradients_equal_a_plain_pytorch_backward(random_suite, backend):
    model = load_checkpoint(random_suite, 4, backend=backend).model
    totals = run_chunked_passes(model, TOKENS, backward=True)
    loss, reference = plain_pytorch_grads(random_suite / "step4")
    assert totals.loss == pytest.approx(loss, rel=1e-5)
    ours = component_gradients(totals.grads)
    theirs = component_gradients(reference)
    for key in [("W_out", 1), ("W_in", 0), ("W_QKV", 1), ("W_E", None), ("W_U", None), ("ln1.w", 1), ("b_out", 0)]:
        assert torch.linalg.vector_norm(ours[key]).item() == pytest.approx(torch.linalg.vector_norm(theirs[key]).item(), rel=1e-4), key
    # HF holds Q, K and V fused (W_QKV); both sides have that key, so leave out the split views.
    total = lambda grads: sum((g.double() ** 2).sum() for k, g in grads.items() if k[0] not in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"))  # noqa: E731
    assert total(ours).item() == pytest.approx(total(theirs).item(), rel=1e-4)


def test_chunked_passes_equal_one_big_batch(random_suite, backend):
    model = load_checkpoint(random_suite, 4, backend=backend).model
    runs = {}
    for chunk_size in (None, 2):
        chunks = []
        totals = run_chunked_passes(model, TOKENS, hooks=HOOKS, backward=True, chunk_size=chunk_size, on_chunk=chunks.append)
        runs[chunk_size] = (totals, chunks)
    (whole, [only]), (split, parts) = runs[None], runs[2]
    assert len(parts) == 3 and whole.loss == pytest.approx(split.loss, rel=1e-6)
    for name in whole.grads:
        torch.testing.assert_close(whole.grads[name], split.grads[name], atol=1e-6, rtol=1e-5)
    for hook in HOOKS:
        torch.testing.assert_close(only.activations[hook], torch.cat([p.activations[hook] for p in parts]), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(only.activation_grads[hook], torch.cat([p.activation_grads[hook] for p in parts]), atol=1e-9, rtol=1e-5)


def test_unknown_hook_is_named(random_suite):
    model = load_checkpoint(random_suite, 4).model
    with pytest.raises(ValueError, match="hook_resid_mid.*do not exist"):
        run_chunked_passes(model, TOKENS, hooks=["blocks.0.hook_resid_mid"])


def test_each_chunk_carries_its_per_token_loss(random_suite, backend):
    """Column t - 1 of `token_loss` is the cross-entropy of predicting position t, as Hugging Face's own
    logits give it; the columns sum to the chunk's loss_sum (in_context_learning reads these, not the logits)."""
    model = load_checkpoint(random_suite, 4, backend=backend).model
    chunks = []
    run_chunked_passes(model, TOKENS, chunk_size=2, on_chunk=chunks.append)
    ours = torch.cat([chunk.token_loss for chunk in chunks])
    hf = GPTNeoXForCausalLM.from_pretrained(random_suite / "step4", attn_implementation="eager")
    with torch.no_grad():
        logits = hf(TOKENS).logits
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), TOKENS[:, 1:], reduction="none")
    assert ours.shape == (5, 11)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    for chunk in chunks:
        assert chunk.token_loss.sum().item() == pytest.approx(chunk.loss_sum, rel=1e-6)


def test_head_scores_and_in_context_learning_share_one_repeated_token_pass(random_suite, backend, monkeypatch):
    """Finishing both on one checkpoint's totals runs the repeated batch once, and gives what each gives alone."""
    from pythia_dynamics import passes
    from pythia_dynamics.analyses import get_analysis

    calls = []
    run_once = passes.repeated_pass

    def counted(model):
        calls.append(1)
        return run_once(model)

    monkeypatch.setattr(passes, "repeated_pass", counted)
    model = load_checkpoint(random_suite, 4, backend=backend).model
    names = ["head_scores", "in_context_learning"]
    accumulators = [get_analysis(name).fn(model) for name in names]
    hooks = [hook for acc in accumulators for hook in acc.hooks]

    def feed(chunk):
        for acc in accumulators:
            acc.update(chunk)

    totals = run_chunked_passes(model, TOKENS, hooks=hooks, on_chunk=feed)
    together = [acc.finish(totals).scalars for acc in accumulators]
    assert len(calls) == 1
    for name, records in zip(names, together, strict=True):
        alone = get_analysis(name).run(model, TOKENS).scalars
        assert len(calls) == 1 + names.index(name) + 1  # each run alone makes its own
        key = ["component", "layer", "head", "stat"]
        merged = records.merge(alone, on=key, suffixes=("", "_alone"))
        assert len(merged) == len(records) == len(alone)
        np.testing.assert_allclose(merged["value"], merged["value_alone"], rtol=1e-6, atol=1e-9)
