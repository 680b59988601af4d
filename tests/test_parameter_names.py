import pytest
import torch

from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.parameter_names import component_gradients, component_of_parameter
from pythia_dynamics.passes import run_chunked_passes
from pythia_dynamics.weights import component_weights


@pytest.mark.parametrize(
    "name, expected",
    [
        ("blocks.1.mlp.W_out", ("W_out", 1)),
        ("gpt_neox.layers.1._original_component.mlp._original_component.dense_4h_to_h._original_component.weight", ("W_out", 1)),
        ("gpt_neox.layers.0.attention.q.weight", ("W_Q", 0)),
        ("gpt_neox.layers.3.attention.query_key_value.weight", ("W_QKV", 3)),
        ("blocks.2.ln2.b", ("ln2.b", 2)),
        ("gpt_neox.layers.2.post_attention_layernorm.bias", ("ln2.b", 2)),
        ("embed.W_E", ("W_E", None)),
        ("embed_out.weight", ("W_U", None)),
        ("unembed.b_U", None),
        ("lm_head.bias", None),
    ],
)
def test_component_of_parameter(name, expected):
    assert component_of_parameter(name) == expected


def test_every_weight_component_gets_a_gradient_on_either_backend(random_suite, backend):
    model = load_checkpoint(random_suite, 4, backend=backend).model
    totals = run_chunked_passes(model, torch.randint(0, 384, (3, 12)), backward=True)
    grads = component_gradients(totals.grads)
    weights = component_weights(model)
    assert set(grads) == set(weights)
    for key, grad in grads.items():
        assert grad.numel() == weights[key].numel(), key


def test_component_weights_are_the_model_level_stacks_per_layer(random_suite, backend):
    model = load_checkpoint(random_suite, 4, backend=backend).model
    weights = component_weights(model)
    for (component, layer), tensor in weights.items():
        if component == "W_QKV":
            stacked = torch.cat([w[layer] for w in (model.W_Q, model.W_K, model.W_V)], dim=0)  # [qkv·head, d_model, d_head]
            assert torch.equal(tensor, stacked.permute(1, 0, 2).flatten(1)), (component, layer)
        elif "." in component:
            norm, param = component.split(".")
            module = getattr(model, norm) if layer is None else getattr(model.blocks[layer], norm)
            assert torch.equal(tensor, getattr(module, param)), (component, layer)
        else:
            whole = getattr(model, component)
            assert torch.equal(tensor, whole if layer is None else whole[layer]), (component, layer)
    assert len(weights) == 17 * model.cfg.n_layers + 4
