"""Checkpoints that cannot be read are refused before any weight is read or anything is written."""

import shutil

import pytest

from pythia_dynamics.loading import CheckpointLoader, load_checkpoint
from pythia_dynamics.sources import LocalSuite
from pythia_dynamics.sources.base import UnsupportedCheckpointError
from pythia_dynamics.sweeps import sweep

FOUND = r"step0/config.json describes model_type 'opt', architectures \['OPTForCausalLM'\]"
SUPPORTED = r"these families only: GPTNeoXForCausalLM \(model_type 'gpt_neox'\).*Olmo2ForCausalLM.*step<N>"


@pytest.fixture(scope="module")
def opt_suite(tmp_path_factory):
    """The local-suite layout holding OPT checkpoints (an architecture no family reads), as transformers saves them."""
    from transformers import OPTConfig, OPTForCausalLM

    root = tmp_path_factory.mktemp("opt") / "opt-suite"
    config = OPTConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2, ffn_dim=16, vocab_size=64,
                       max_position_embeddings=16, word_embed_proj_dim=8)
    for step in (0, 10):
        OPTForCausalLM(config).save_pretrained(root / f"step{step}")
    return root


@pytest.fixture
def no_weight_reads(monkeypatch):
    monkeypatch.setattr(LocalSuite, "read_state_dict", lambda *_: pytest.fail("weights were read"))


def test_a_suite_of_another_architecture_is_refused_naming_what_was_found(opt_suite, no_weight_reads):
    suite = LocalSuite(opt_suite)
    with pytest.raises(UnsupportedCheckpointError, match=f"{FOUND}.*{SUPPORTED}"):
        suite.preflight(suite.steps)
    with pytest.raises(UnsupportedCheckpointError, match=FOUND):
        suite.hf_config()  # refused without a preflight too, rather than read as GPT-NeoX
    with pytest.raises(ValueError, match="It holds a config.json: a single checkpoint, not a suite"):
        LocalSuite(opt_suite / "step0")


def test_loading_another_architecture_fails_before_reading_weights(opt_suite, no_weight_reads, backend):
    with pytest.raises(UnsupportedCheckpointError, match=FOUND):
        load_checkpoint(opt_suite, 0, backend=backend)
    with pytest.raises(UnsupportedCheckpointError, match=FOUND):
        next(CheckpointLoader(opt_suite, backend=backend).iter("all"))


def test_sweeping_another_architecture_writes_nothing(opt_suite, no_weight_reads, tmp_path):
    with pytest.raises(UnsupportedCheckpointError, match=f"{FOUND}.*{SUPPORTED}"):
        sweep(opt_suite, tmp_path / "store", analyses="weight_norms", progress=False)
    assert not (tmp_path / "store").exists()


def test_a_broken_config_is_refused_before_the_sweep_writes(random_suite, tmp_path):
    root = shutil.copytree(random_suite, tmp_path / "truncated")
    config = (root / "step2" / "config.json").read_text()
    (root / "step2" / "config.json").write_text(config[:40])
    with pytest.raises(UnsupportedCheckpointError, match=r"step2/config.json is not valid JSON"):
        sweep(root, tmp_path / "store", analyses="weight_norms", progress=False)
    assert not (tmp_path / "store").exists()
    summary = sweep(root, tmp_path / "store", steps="0,4", analyses="weight_norms", progress=False)
    assert summary.done == [0, 4] and not summary.failed  # steps with sound configs still sweep
