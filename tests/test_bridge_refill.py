"""installers.bridge.refill: a booted TransformerBridge refilled in place equals one freshly booted on those weights."""

import pytest
import torch

from transformers import GPTNeoXForCausalLM

from pythia_dynamics import compat
from pythia_dynamics.architectures.gpt_neox import GPT_NEOX
from pythia_dynamics.installers import bridge as bridge_installer
from pythia_dynamics.parameter_names import component_gradients
from pythia_dynamics.passes import run_chunked_passes
from pythia_dynamics.sources.local import LocalSuite
from pythia_dynamics.synthetic import tiny_config, write_random_suite
from pythia_dynamics.weights import component_weights

pytestmark = pytest.mark.skipif(not compat.has_transformer_bridge(), reason="needs TransformerLens's TransformerBridge")

TOKENS = torch.randint(0, 384, (3, 12), generator=torch.Generator().manual_seed(2))
# Same weights, same kernels: the outputs agree to rounding of a reordered sum at most.
TIGHT = dict(rtol=1e-6, atol=1e-6)


def plant_biases_and_norms(step: int, model) -> None:
    """GPT-NeoX initialises biases to 0 and layer norms to 1, which a refill that skipped them would still match."""
    generator = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5 + (1.0 if "layernorm" in name else 0.0))


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_random_suite(tmp_path_factory.mktemp("refill"), tiny_config(), [0, 10, 20], edit=plant_biases_and_norms)


def boot(suite, step: int, processed: bool = False):
    """A bridge booted afresh on one step (not through CheckpointLoader, which itself refills)."""
    step_dir = suite / f"step{step}"
    hf_model = GPTNeoXForCausalLM.from_pretrained(step_dir)
    return bridge_installer.boot(hf_model, None, str(step_dir), processed=processed, device="cpu", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def fresh(suite):
    return {step: boot(suite, step) for step in (10, 20)}


def refilled(suite, *steps: int):
    bridge = boot(suite, 0)
    for step in steps:
        bridge_installer.refill(bridge, GPT_NEOX, LocalSuite(suite).read_state_dict(step))
    return bridge


def assert_same_weights(ours, theirs):
    ours, theirs = component_weights(ours), component_weights(theirs)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_refilled_bridge_equals_a_fresh_boot(suite, fresh):
    step0, bridge = component_weights(boot(suite, 0)), refilled(suite, 10)
    assert not any(torch.equal(w, step0[key]) for key, w in component_weights(bridge).items())
    assert_same_weights(bridge, fresh[10])
    torch.testing.assert_close(bridge(TOKENS), fresh[10](TOKENS), **TIGHT)


def test_hooks_fire_with_the_new_weights(suite, fresh):
    _, ours = refilled(suite, 10).run_with_cache(TOKENS)
    _, theirs = fresh[10].run_with_cache(TOKENS)
    assert ours.keys() == theirs.keys() and len(ours) > 20
    for name in ours.keys():
        torch.testing.assert_close(ours[name], theirs[name], **TIGHT, msg=name)


def test_gradients_reach_every_component(suite, fresh):
    bridge = refilled(suite, 10)
    ours = run_chunked_passes(bridge, TOKENS, backward=True)
    theirs = run_chunked_passes(fresh[10], TOKENS, backward=True)
    assert ours.loss == pytest.approx(theirs.loss, rel=1e-6)
    ours, theirs = component_gradients(ours.grads), component_gradients(theirs.grads)
    assert ours.keys() == theirs.keys() == component_weights(bridge).keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], **TIGHT, msg=str(key))


def test_refilling_twice_equals_a_fresh_boot_on_the_last(suite, fresh):
    bridge = refilled(suite, 10, 20)
    assert_same_weights(bridge, fresh[20])
    torch.testing.assert_close(bridge(TOKENS), fresh[20](TOKENS), **TIGHT)


def test_refill_writes_into_the_existing_storage(suite):
    bridge = boot(suite, 0)
    storage = [t.data_ptr() for t in (*bridge.parameters(), *bridge.buffers())]
    bridge_installer.refill(bridge, GPT_NEOX, LocalSuite(suite).read_state_dict(10))
    assert [t.data_ptr() for t in (*bridge.parameters(), *bridge.buffers())] == storage


def test_a_float16_checkpoint_is_converted_to_the_bridge_dtype(suite, fresh):
    bridge = boot(suite, 0)
    bridge_installer.refill(bridge, GPT_NEOX, {k: v.half() for k, v in LocalSuite(suite).read_state_dict(10).items()})
    assert {p.dtype for p in bridge.parameters()} == {torch.float32}
    # Splitting and reshaping only move entries, so the result is the fresh weights rounded through float16.
    ours, theirs = component_weights(bridge), component_weights(fresh[10])
    for key in ours:
        assert torch.equal(ours[key], theirs[key].half().float()), key


def test_stale_gradients_are_cleared_as_on_a_fresh_boot(suite):
    bridge = boot(suite, 0)
    bridge(TOKENS).sum().backward()
    bridge_installer.refill(bridge, GPT_NEOX, LocalSuite(suite).read_state_dict(10))
    assert all(p.grad is None for p in bridge.parameters())


def test_misfitting_weights_are_rejected_before_anything_is_copied(suite):
    bridge = boot(suite, 0)
    before = component_weights(bridge)
    state_dict = LocalSuite(suite).read_state_dict(10)
    with pytest.raises(ValueError, match="unexpected"):
        bridge_installer.refill(bridge, GPT_NEOX, state_dict | {"gpt_neox.layers.9.mlp.dense_h_to_4h.weight": torch.zeros(128, 32)})
    with pytest.raises(ValueError, match="mis-shaped"):
        bridge_installer.refill(bridge, GPT_NEOX, state_dict | {"gpt_neox.final_layer_norm.bias": torch.zeros(1)})
    assert all(torch.equal(w, before[k]) for k, w in component_weights(bridge).items())


def test_a_missing_weight_is_refused_rather_than_left_stale(suite):
    state_dict = LocalSuite(suite).read_state_dict(10)
    del state_dict["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]
    with pytest.raises(NotImplementedError, match="dense_4h_to_h"):
        bridge_installer.refill(boot(suite, 0), GPT_NEOX, state_dict)


def test_a_processed_bridge_is_refused(suite):
    with pytest.raises(NotImplementedError, match="processed"):
        bridge_installer.refill(boot(suite, 0, processed=True), GPT_NEOX, LocalSuite(suite).read_state_dict(10))


def test_the_unembedding_bias_booting_adds_is_reset_to_zero(suite, fresh):
    bridge = boot(suite, 0)
    with torch.no_grad():
        bridge.b_U.fill_(1.0)
    bridge_installer.refill(bridge, GPT_NEOX, LocalSuite(suite).read_state_dict(10))
    assert torch.equal(bridge.b_U, fresh[10].b_U) and not bridge.b_U.any()


def test_a_transformer_lens_that_splits_qkv_differently_is_refused(suite, monkeypatch):
    bridge = boot(suite, 0)
    before = component_weights(bridge)
    attention = bridge.blocks[0].attn
    split = attention.split_qkv_matrix
    monkeypatch.setattr(attention, "split_qkv_matrix", lambda component: tuple(reversed(split(component))))
    with pytest.raises(NotImplementedError, match="splits GPT-NeoX's query_key_value"):
        bridge_installer.refill(bridge, GPT_NEOX, LocalSuite(suite).read_state_dict(10))
    assert all(torch.equal(w, before[k]) for k, w in component_weights(bridge).items())


def test_a_parameter_replaced_between_refills_is_the_one_refilled(suite, fresh):
    # Refills reuse what they worked out from the bridge's module tree; a parameter swapped for a new one
    # since (load_state_dict(assign=True), a user's edit) must get the next checkpoint, not the old object.
    bridge = refilled(suite, 10)
    old = bridge_installer.stored_parameters(bridge)["gpt_neox.final_layer_norm.weight"]
    owner = next(m for m in bridge.original_model.modules() if m._parameters.get("weight") is old)
    owner.weight = torch.nn.Parameter(torch.zeros_like(old))
    bridge_installer.refill(bridge, GPT_NEOX, LocalSuite(suite).read_state_dict(20))
    assert bridge_installer.stored_parameters(bridge)["gpt_neox.final_layer_norm.weight"] is owner.weight
    assert_same_weights(bridge, fresh[20])
    torch.testing.assert_close(bridge(TOKENS), fresh[20](TOKENS), **TIGHT)
