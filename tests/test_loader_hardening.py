"""Checkpoints that cannot be read are refused before any weight is read or anything is written."""

import shutil

import pytest

from pythia_dynamics.loading import CheckpointLoader, load_checkpoint
from pythia_dynamics.sources import LocalSuite
from pythia_dynamics.sources.base import UnsupportedCheckpointError
from pythia_dynamics.sweeps import sweep

FOUND = r"step0/config.json describes model_type 'gpt2', architectures \['GPT2LMHeadModel'\]"
SUPPORTED = r"GPT-NeoX checkpoints only \(GPTNeoXForCausalLM, model_type 'gpt_neox'\).*step<N>"


@pytest.fixture(scope="module")
def gpt2_suite(tmp_path_factory):
    """The local-suite layout holding GPT-2 checkpoints (transformers' own save_pretrained output)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("gpt2") / "gpt2-suite"
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=64, n_positions=16)
    for step in (0, 10):
        GPT2LMHeadModel(config).save_pretrained(root / f"step{step}")
    return root


@pytest.fixture
def no_weight_reads(monkeypatch):
    monkeypatch.setattr(LocalSuite, "read_state_dict", lambda *_: pytest.fail("weights were read"))


def test_a_suite_of_another_architecture_is_refused_naming_what_was_found(gpt2_suite, no_weight_reads):
    suite = LocalSuite(gpt2_suite)
    with pytest.raises(UnsupportedCheckpointError, match=f"{FOUND}.*{SUPPORTED}"):
        suite.preflight(suite.steps)
    with pytest.raises(UnsupportedCheckpointError, match=FOUND):
        suite.hf_config()  # refused without a preflight too, rather than read as GPT-NeoX
    with pytest.raises(ValueError, match="It holds a config.json: a single checkpoint, not a suite"):
        LocalSuite(gpt2_suite / "step0")


def test_loading_another_architecture_fails_before_reading_weights(gpt2_suite, no_weight_reads, backend):
    with pytest.raises(UnsupportedCheckpointError, match=FOUND):
        load_checkpoint(gpt2_suite, 0, backend=backend)
    with pytest.raises(UnsupportedCheckpointError, match=FOUND):
        next(CheckpointLoader(gpt2_suite, backend=backend).iter("all"))


def test_sweeping_another_architecture_writes_nothing(gpt2_suite, no_weight_reads, tmp_path):
    with pytest.raises(UnsupportedCheckpointError, match=f"{FOUND}.*{SUPPORTED}"):
        sweep(gpt2_suite, tmp_path / "store", analyses="weight_norms", progress=False)
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
