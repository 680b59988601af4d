import pytest
import torch
from transformers import GPTNeoXForCausalLM

from pythia_dynamics import compat
from pythia_dynamics.loading import CheckpointLoader
from pythia_dynamics.architectures import ComponentViews, ModelShape
from pythia_dynamics.architectures.gpt_neox import GPT_NEOX
from pythia_dynamics.installers import hooked as hooked_installer
from pythia_dynamics.sources import LocalSuite
from pythia_dynamics.weights import component_weights


def transformer_lens_views(state_dict, n_heads):
    """GPT-NeoX's description read with only the head count the patterns need."""
    return GPT_NEOX.views(state_dict, ModelShape(n_layers=0, n_heads=n_heads, n_kv_heads=n_heads, tied_embeddings=False))


def test_views_are_what_transformer_lens_converts(random_suite):
    # TransformerLens's own GPT-NeoX conversion (3.x) is the peer implementation of this layout; on 4.x
    # the comparison is with the bridge's weights (test_component_views_equal_component_weights...).
    convert_neox_weights = pytest.importorskip("transformer_lens.pretrained.weight_conversions.neox").convert_neox_weights

    hf = GPTNeoXForCausalLM.from_pretrained(random_suite / "step4")
    model = CheckpointLoader(random_suite, backend=compat.available_backends()[0]).load(4).model
    expected = convert_neox_weights(hf, model.cfg)
    views = transformer_lens_views(LocalSuite(random_suite).read_state_dict(4), model.cfg.n_heads)
    assert set(views) == set(expected) - {"unembed.b_U"}
    for name, view in views.items():
        torch.testing.assert_close(view, expected[name], rtol=0, atol=0, msg=name)


def test_views_share_the_stored_tensors_memory():
    stored = {"gpt_neox.layers.0.attention.query_key_value.weight": torch.randn(3 * 8, 8)}
    views = transformer_lens_views(stored, n_heads=2)
    views["blocks.0.attn.W_K"].zero_()  # writing through a view writes the stored tensor
    assert (stored["gpt_neox.layers.0.attention.query_key_value.weight"] == 0).sum() == 8 * 8


def test_filler_switches_every_weight_in_place(random_suite):
    if not compat.has_hooked_transformer():
        pytest.skip("HookedTransformer is not in this TransformerLens")
    loader = CheckpointLoader(random_suite, backend="hooked")
    model = loader.load(2).model
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    loader.load(8)
    fresh = hooked_installer.build(random_suite / "step8", None, processed=False, device="cpu", dtype=torch.float32)
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    fresh.load_state_dict(convert_neox_weights(GPTNeoXForCausalLM.from_pretrained(random_suite / "step8"), fresh.cfg), strict=False)
    for name, param in fresh.named_parameters():
        torch.testing.assert_close(dict(model.named_parameters())[name], param, rtol=0, atol=0, msg=name)
    assert pointers == {name: p.data_ptr() for name, p in model.named_parameters()}  # in place
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():  # strided parameters, same numbers as TransformerLens's own contiguous ones
        torch.testing.assert_close(model(tokens), fresh(tokens), rtol=1e-5, atol=1e-5)
    # W_Q, W_K, W_V of a block are views into one buffer laid out as GPT-NeoX's fused weight
    attn = model.blocks[0].attn
    assert attn.W_Q.untyped_storage().data_ptr() == attn.W_V.untyped_storage().data_ptr()


def test_a_checkpoint_of_another_shape_leaves_the_model_as_it_was(random_suite):
    if not compat.has_hooked_transformer():
        pytest.skip("HookedTransformer is not in this TransformerLens")
    loader = CheckpointLoader(random_suite, backend="hooked")
    model = loader.load(2).model
    before = {name: p.clone() for name, p in model.named_parameters()}
    stored = LocalSuite(random_suite).read_state_dict(8)
    stored["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"] = torch.zeros(5, 5)
    with pytest.raises(ValueError, match=r"size mismatch \['gpt_neox.layers.1.mlp.dense_4h_to_h.weight"):
        loader._installer._filler.fill(stored)
    stored["gpt_neox.layers.0.mlp.act.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected \['gpt_neox.layers.0.mlp.act.weight'\]"):
        loader._installer._filler.fill(stored)
    with pytest.raises(ValueError, match="not a GPT-NeoX checkpoint: 1 tensor"):
        transformer_lens_views(stored, 4)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name


def test_component_views_equal_component_weights_of_the_loaded_model(random_suite, backend):
    model = CheckpointLoader(random_suite, backend=backend).load(4).model
    loaded = component_weights(model)
    shape = ModelShape(model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_heads, False)
    views = ComponentViews(GPT_NEOX, LocalSuite(random_suite).read_state_dict(4), shape)
    assert list(views) == list(loaded)
    for key, tensor in loaded.items():
        torch.testing.assert_close(views[key], tensor, rtol=0, atol=0, msg=str(key))
    with pytest.raises(KeyError):
        views[("W_in", 99)]


def test_filler_lays_a_moved_model_out_again(random_suite):
    if not compat.has_hooked_transformer():
        pytest.skip("HookedTransformer is not in this TransformerLens")
    loader = CheckpointLoader(random_suite, backend="hooked")
    model = loader.load(2).model
    filler = loader._installer._filler
    assert filler.laid_out()
    model.to(torch.float16)  # new tensors: the parameters no longer view the filler's buffers
    assert not filler.laid_out()
    step8 = LocalSuite(random_suite).read_state_dict(8)
    filler.fill(step8)
    assert filler.laid_out() and {b.dtype for b in filler.buffers.values()} == {torch.float16}
    attn = model.blocks[1].attn
    assert attn.W_Q.untyped_storage().data_ptr() == attn.W_V.untyped_storage().data_ptr()
    expected = transformer_lens_views(step8, model.cfg.n_heads)
    for name, param in model.named_parameters():
        if name in expected:
            assert torch.equal(param, expected[name].half()), name
    # W_Q, W_K and W_V live in one stored tensor: they cannot be filled in two dtypes.
    attn.W_K.data = attn.W_K.data.float()
    with pytest.raises(ValueError, match=r"share the stored tensor gpt_neox.layers.1.attention.query_key_value.weight"):
        filler.fill(step8)
