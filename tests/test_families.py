"""Every architecture family on every backend that can hold it, from tiny random checkpoints as transformers
saves them (GPT-NeoX, GPT-2, LLaMA with grouped-query attention, SmolLM3, OLMo-1, OLMo-2)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pythia_dynamics import compat
from pythia_dynamics.analyses import registered_analyses
from pythia_dynamics.architectures import FAMILIES, ComponentViews, ModelShape
from pythia_dynamics.loading import CheckpointLoader
from pythia_dynamics.parameter_names import component_gradients
from pythia_dynamics.passes import run_chunked_passes
from pythia_dynamics.sources import LocalSuite
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep
from pythia_dynamics.synthetic import TINY_FAMILY_CONFIGS, tiny_family_config, write_random_suite

STEPS = [0, 5, 9]
TOKENS = torch.tensor([[5, 17, 42, 3, 99, 7, 250, 11, 64, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
# What each family's checkpoints store, beyond Q/K/V/O and the MLP's in/out matrices.
EXPECTED = {
    "gpt_neox": {"has": {"W_QKV", "b_Q", "ln1.b", "ln_final.b"}, "lacks": {"W_gate", "W_pos"}},
    "gpt2": {"has": {"W_QKV", "W_pos", "b_in", "ln2.b"}, "lacks": {"W_gate"}},
    "llama": {"has": {"W_gate", "ln1.w", "ln_final.w"}, "lacks": {"W_QKV", "b_Q", "b_in", "ln1.b"}},
    "smollm3": {"has": {"W_gate", "ln1.w", "W_U"}, "lacks": {"W_QKV", "b_Q", "ln1.b"}},
    "olmo": {"has": {"W_gate"}, "lacks": {"W_QKV", "ln1.w", "ln_final.w", "b_O"}},
    "olmo2": {"has": {"W_gate", "q_norm.w", "k_norm.w", "ln2.w"}, "lacks": {"W_QKV", "ln1.b", "b_in"}},
}


def _perturb(step: int, model: torch.nn.Module) -> None:
    """Norm weights start at one in every fresh model: move every tensor, so each step differs everywhere."""
    generator = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module", params=list(TINY_FAMILY_CONFIGS))
def family_suite(request, tmp_path_factory):
    from pythia_dynamics.train.tokenizer import train_tokenizer

    root = write_random_suite(
        tmp_path_factory.mktemp("families") / request.param, tiny_family_config(request.param), STEPS, edit=_perturb
    )
    docs = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)]
    train_tokenizer(docs, 300).save_pretrained(root)
    (root / "heldout.txt").write_text(" ".join(docs * 3))
    return request.param, root


def _loader(family_suite, backend) -> CheckpointLoader:
    model_type, root = family_suite
    if backend == "hooked" and not FAMILIES[model_type].hooked_transformer:
        with pytest.raises(ValueError, match=f"backend 'hooked' cannot load {FAMILIES[model_type].name}.*'bridge'"):
            CheckpointLoader(root, backend=backend).load(STEPS[0])
        pytest.skip(f"HookedTransformer cannot hold {model_type} (refusal checked)")
    return CheckpointLoader(root, backend=backend)


def test_logits_equal_hugging_faces_at_every_checkpoint_switched_in_place(family_suite, backend):
    loader = _loader(family_suite, backend)
    model = None
    for step in STEPS:
        checkpoint = loader.load(step)
        assert model is None or checkpoint.model is model  # one model, refilled
        model = checkpoint.model
        expected = AutoModelForCausalLM.from_pretrained(family_suite[1] / f"step{step}").eval()(TOKENS).logits
        with torch.no_grad():
            torch.testing.assert_close(model(TOKENS), expected, rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_switching_changes_every_weight_and_leaves_none_stale(family_suite, backend):
    model_type, root = family_suite
    loader = _loader(family_suite, backend)
    from pythia_dynamics.weights import component_weights

    first = {key: w.clone() for key, w in component_weights(loader.load(0).model).items()}
    last = component_weights(loader.load(9).model)
    source = LocalSuite(root)
    stored = ComponentViews(FAMILIES[model_type], source.read_state_dict(9), ModelShape.of(source.hf_config()))
    assert list(last) == list(stored)
    components = {component for component, _ in last}
    assert EXPECTED[model_type]["has"] <= components and not EXPECTED[model_type]["lacks"] & components
    for key, weight in last.items():
        torch.testing.assert_close(weight, stored[key].float(), rtol=0, atol=0, msg=str(key))
        assert not torch.equal(weight, first[key]), f"{key} did not change between steps 0 and 9"


def test_gradients_cover_exactly_the_stored_weights(family_suite, backend):
    from pythia_dynamics.installers import family_of_model
    from pythia_dynamics.weights import component_weights

    model = _loader(family_suite, backend).load(5).model
    totals = run_chunked_passes(model, TOKENS, backward=True)
    grads = component_gradients(totals.grads, family_of_model(model))
    weights = component_weights(model)
    if backend == "bridge" and ModelShape.of(LocalSuite(family_suite[1]).hf_config()).tied_embeddings:
        # The wrapped model ties W_U to W_E: one parameter, one gradient (of both uses), recorded as W_E's.
        weights.pop(("W_U", None))
    assert set(grads) == set(weights)
    for key, grad in grads.items():
        assert grad.numel() == weights[key].numel(), key


def test_a_sweep_of_three_revisions_runs_every_analysis(family_suite, tmp_path):
    model_type, root = family_suite
    sweep(root, tmp_path / "store", analyses=list(registered_analyses()), progress=False)
    store = Store(tmp_path / "store")
    assert store.failures().empty, store.failures().to_string()
    assert {r.analysis for r in store.results()} - {"audit"} == set(registered_analyses())
    norms = store.scalars(analysis="weight_norms")
    assert sorted(norms["step"].unique()) == STEPS
    assert EXPECTED[model_type]["has"] <= set(norms["component"])


def test_hooked_is_chosen_where_it_can_hold_the_family_else_the_bridge(family_suite):
    model_type, root = family_suite
    expected = "hooked" if compat.has_hooked_transformer() and FAMILIES[model_type].hooked_transformer else "bridge"
    assert CheckpointLoader(root).backend == expected
