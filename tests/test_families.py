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


# One named suite per family, each under its real branch names (docs/suites.md), swept by name offline.
NAMED_SUITES = {
    "olmo-1b": ("allenai/OLMo-1B-hf", "olmo", {"step0-tokens0B": 0, "step1000-tokens4B": 1000, "step2000-tokens8B": 2000}),
    "olmo-2-1b": ("allenai/OLMo-2-0425-1B", "olmo2",
                  {"stage1-step0-tokens0B": 0, "stage1-step1000-tokens2B": 1000, "stage2-ingredient1-step5-tokens1B": 5}),
    "alias-gpt2-small-x21": ("stanford-crfm/alias-gpt2-small-x21", "gpt2", {"checkpoint-0": 0, "checkpoint-10": 10}),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", "llama", {"step-0": 0, "step-240000": 240000}),
    "smollm3-3b": ("HuggingFaceTB/SmolLM3-3B-checkpoints", "smollm3", {"stage1-step-40000": 40000, "stage2-step-3480000": 3480000}),
    "amber": ("LLM360/Amber", "llama", {"ckpt_000": 0, "ckpt_001": 1}),
    "pythia-14m": ("EleutherAI/pythia-14m", "gpt_neox", {"step0": 0, "step512": 512}),
}


@pytest.fixture(scope="module")
def named_suites_cache(tmp_path_factory):
    from pythia_dynamics.sources import write_hub_cache
    from pythia_dynamics.train.tokenizer import train_tokenizer

    home = tmp_path_factory.mktemp("hf-home")
    tokenizer = train_tokenizer([f"the quick brown fox {i}" for i in range(200)], 300)
    for name, (repo_id, model_type, branches) in NAMED_SUITES.items():
        folders = write_random_suite(home / "folders" / name, tiny_family_config(model_type), sorted(set(branches.values())))
        tokenizer.save_pretrained(folders)
        revisions = {}
        for branch, step in branches.items():
            revision = home / "revisions" / name / branch
            revision.mkdir(parents=True)
            for file in [*(folders / f"step{step}").iterdir(), *folders.glob("tokenizer*")]:
                (revision / file.name).write_bytes(file.read_bytes())
            revisions[branch] = revision
        write_hub_cache(home / "hub", repo_id, revisions)
    return home


@pytest.mark.parametrize("name", list(NAMED_SUITES))
def test_the_cli_sweeps_each_named_suite_from_the_offline_cache(named_suites_cache, name, tmp_path):
    import os
    import subprocess
    import sys

    repo_id, model_type, branches = NAMED_SUITES[name]
    steps = ",".join(str(s) for b, s in branches.items() if not b.startswith("stage2-ingredient"))
    env = os.environ | {"HF_HOME": str(named_suites_cache), "HF_HUB_CACHE": str(named_suites_cache / "hub"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pythia_dynamics.cli", "sweep", name, "--steps", steps,
               "--analyses", "weight_norms,spectra,eval_loss", "--out", str(tmp_path / "store")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    store = Store(tmp_path / "store")
    assert store.failures().empty, store.failures().to_string()
    stored = {r.step for r in store.results(repo_id) if r.analysis == "weight_norms"}
    assert stored == {int(s) for s in steps.split(",")}
    assert set(store.scalars(analysis="eval_loss")["step"]) == stored


def test_a_report_overlays_two_families_on_fraction_of_training_and_tokens_seen(named_suites_cache, tmp_path):
    from pythia_dynamics.figures.curves import across_models
    from pythia_dynamics.report import build_report
    from pythia_dynamics.sources import HubSource

    store_path = tmp_path / "store"
    for name, steps in (("pythia-14m", "0,512"), ("olmo-1b", "0,1000,2000")):
        source = HubSource(name, cache_dir=named_suites_cache / "hub")
        sweep(source, store_path, steps=steps, analyses="weight_norms", progress=False)
    store = Store(store_path)
    meta = {model: store.source_meta(model) for model in store.models()}
    figures = across_models(store.scalars(analysis="weight_norms"), "W_in", "frobenius_norm", reduce="mean",
                            title="W_in", y_title="norm", source_meta=meta)  # fmt: skip
    assert len(figures) == 2
    by_fraction, by_tokens = ({trace.name: list(trace.x) for trace in fig.data} for fig in figures)
    assert by_fraction == {"EleutherAI/pythia-14m": [0.0, 1.0], "allenai/OLMo-1B-hf": [0.0, 0.5, 1.0]}
    assert by_tokens == {"EleutherAI/pythia-14m": [0, 512 * 2_097_152], "allenai/OLMo-1B-hf": [0, 4 * 10**9, 8 * 10**9]}
    page = build_report([store_path], tmp_path / "report.html").read_text()
    assert "W_in: Frobenius norm averaged over blocks, every model, against tokens seen" in page
    # Without tokens for one of the models, only the fraction-of-training figure.
    meta["allenai/OLMo-1B-hf"] = {}
    assert len(across_models(store.scalars(analysis="weight_norms"), "W_in", "frobenius_norm", reduce="mean",
                             title="W_in", y_title="norm", source_meta=meta)) == 1  # fmt: skip


def test_figures_draw_a_gated_mlp_and_unfused_attention(named_suites_cache, tmp_path):
    from pythia_dynamics.figures.curves import per_block_curves
    from pythia_dynamics.sources import HubSource

    sweep(HubSource("smollm2-135m", cache_dir=named_suites_cache / "hub"), tmp_path / "store", analyses="weight_norms",
          progress=False)  # fmt: skip
    scalars = Store(tmp_path / "store").scalars(analysis="weight_norms")
    (fig,) = per_block_curves(scalars, "frobenius_norm", title="norms", y_title="‖W‖_F")
    panels = [annotation.text for annotation in fig.layout.annotations]
    assert panels[:5] == ["W_Q", "W_K", "W_V", "W_O", "W_gate"] and "W_QKV" not in panels and "b_in" not in panels


def test_svd_directions_of_a_gated_mlp(family_suite, backend):
    """W_gate's directions: input side of diag(ln2.w) W_gate, as W_in's (gated families only)."""
    from pythia_dynamics.analyses import get_analysis
    from pythia_dynamics.analyses.svd_directions import svd_strings

    model_type, _ = family_suite
    model = _loader(family_suite, backend).load(9).model
    if model_type in ("gpt_neox", "gpt2"):  # no gate: none recorded, and asking for one says why
        assert "W_gate" not in set(get_analysis("svd_directions").run(model).arrays["component"])
        with pytest.raises(ValueError, match="needs a gated MLP"):
            svd_strings(model, layer=1, kind="mlp_gate")
        return
    block = model.blocks[1]
    folded = block.mlp.W_gate.detach()
    family = FAMILIES[model_type]
    if not family.post_norm and any("ln2.w" in targets for targets in family.block_layout.values()):
        folded = block.ln2.w.detach()[:, None] * folded  # OLMo-1's norm has no weight; OLMo-2's ln2 comes after
    expected = torch.linalg.svdvals(folded.double())
    strings = svd_strings(model, layer=1, kind="mlp_gate", k=3, n=4)
    got = strings.drop_duplicates("direction").sort_values("direction")["singular_value"].to_numpy()
    torch.testing.assert_close(torch.from_numpy(got).double(), expected[:4], rtol=1e-4, atol=1e-6)
    arrays = get_analysis("svd_directions").run(model).arrays
    assert {"OV", "W_in", "W_out", "W_gate"} <= set(arrays["component"])
