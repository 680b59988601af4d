import json

import pytest
import torch

from pythia_dynamics.train import SuiteConfig, lr_at, pythia_like_schedule, tiny_test_config
from pythia_dynamics.train.recipe import build_model, build_optimizer

PYTHIA_STEPS = [0] + [2**i for i in range(10)] + list(range(1000, 143_001, 1000))


def test_schedule_reproduces_pythias_154_checkpoints():
    steps = pythia_like_schedule(143_000, 143)
    assert steps == PYTHIA_STEPS
    assert len(steps) == 154


def test_schedule_scaled_down():
    assert pythia_like_schedule(1200, 30) == [0, 1, 2, 4, 8, 16, 32] + list(range(40, 1201, 40))
    assert pythia_like_schedule(40, 4) == [0, 1, 2, 4, 8, 10, 20, 30, 40]
    assert pythia_like_schedule(10, 10) == [0] + list(range(1, 11))


@pytest.mark.parametrize("total, n", [(1000, 3), (143_001, 143), (0, 1), (10, 0)])
def test_schedule_rejects_uneven_or_empty(total, n):
    with pytest.raises(ValueError):
        pythia_like_schedule(total, n)


def test_config_rejects_uneven_schedule_early():
    with pytest.raises(ValueError, match="multiple"):
        SuiteConfig(total_steps=1000, n_evenly_spaced=3)


@pytest.mark.parametrize("field, value, listed", [("corpus", "web", "stdlib"), ("hidden_act", "tanh", "gelu")])
def test_literal_fields_are_validated(field, value, listed):
    with pytest.raises(ValueError, match=listed):
        SuiteConfig(**{field: value})


def test_files_corpus_needs_paths():
    with pytest.raises(ValueError, match="corpus_paths"):
        SuiteConfig(corpus="files")


def test_dict_round_trip_through_json():
    config = SuiteConfig(corpus="files", corpus_paths=["a.txt", "docs"], weight_decay=0.1, seed=7)
    assert config.corpus_paths == ("a.txt", "docs")
    back = SuiteConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert hash(back) == hash(config)
    with pytest.raises(ValueError, match="unknown"):
        SuiteConfig.from_dict({**config.to_dict(), "n_layer": 3})


def test_weight_decay_derived_from_timescale_unless_given():
    config = SuiteConfig()
    assert config.weight_decay is None
    assert config.peak_lr * config.effective_weight_decay * config.total_steps == pytest.approx(1.4)
    # Pythia-70m: lr 1e-3, wd 0.01, 143k steps
    pythia = SuiteConfig(peak_lr=1e-3, total_steps=143_000, n_evenly_spaced=143, weight_decay_timescale=1.43)
    assert pythia.effective_weight_decay == pytest.approx(0.01)
    assert SuiteConfig(weight_decay=0.05).effective_weight_decay == 0.05


def test_lr_schedule_warmup_peak_and_cosine():
    config = SuiteConfig(total_steps=1000, n_evenly_spaced=10, warmup_fraction=0.1, peak_lr=2e-3, min_lr_ratio=0.1)
    assert config.warmup_steps == 100
    lrs = [lr_at(s, config) for s in range(1001)]
    assert lrs[0] == 0.0
    # linear warm-up: equal increments up to the peak at the end of warm-up
    increments = [lrs[s + 1] - lrs[s] for s in range(100)]
    assert max(increments) == pytest.approx(min(increments))
    assert lrs[50] == pytest.approx(1e-3)
    assert lrs[100] == pytest.approx(2e-3)
    assert max(lrs) == lrs[100]
    # cosine: strictly decreasing after warm-up, to min_lr at the last step, half-way at the midpoint
    assert all(a > b for a, b in zip(lrs[100:], lrs[101:]))
    assert lrs[1000] == pytest.approx(2e-4)
    assert lrs[550] == pytest.approx((2e-3 + 2e-4) / 2)
    with pytest.raises(ValueError):
        lr_at(1001, config)


def test_default_lr_schedule_is_pythias_shape():
    config = SuiteConfig()
    assert config.warmup_steps == round(0.01 * config.total_steps) > 0
    assert lr_at(config.warmup_steps, config) == config.peak_lr
    assert lr_at(config.total_steps, config) == pytest.approx(0.1 * config.peak_lr)


def test_model_follows_the_pythia_architecture():
    config = tiny_test_config()
    model = build_model(config, vocab_size=384, eos_token_id=383)
    hf = model.config
    assert hf.use_parallel_residual is True
    assert hf.tie_word_embeddings is False
    assert hf.hidden_act == "gelu"
    assert hf.layer_norm_eps == 1e-5
    rope = getattr(hf, "rope_parameters", None) or {}
    assert rope.get("partial_rotary_factor", getattr(hf, "rotary_pct", None)) == 0.25
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size) == (2, 32, 4, 128)
    assert hf.eos_token_id == 383


def test_weight_decay_only_on_matrices():
    config = tiny_test_config()
    torch.manual_seed(0)
    model = build_model(config, vocab_size=384, eos_token_id=383)
    opt = build_optimizer(model, config)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed | plain == set(names.values()) and not decayed & plain
    assert decayed == {n for n, p in model.named_parameters() if p.ndim >= 2}
    embeddings = [model.get_input_embeddings().weight, model.get_output_embeddings().weight]
    assert {names[id(p)] for p in embeddings} <= decayed
    assert any("layernorm" in n for n in plain) and all(n.endswith((".bias", "norm.weight")) for n in plain)
    assert all(g["betas"] == (0.9, 0.95) and g["eps"] == 1e-8 for g in opt.param_groups)
    [wd] = {g["weight_decay"] for g in opt.param_groups} - {0.0}
    assert wd == pytest.approx(config.effective_weight_decay)

    # with zero gradients AdamW only decays: matrices shrink by (1 - lr * wd), vectors stay put
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for g in opt.param_groups:
        g["lr"] = 1e-2
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 1e-2 * wd) if p.ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected)


def test_a_dataset_corpus_is_read_offline_from_a_local_folder(tmp_path):
    import pandas as pd

    from pythia_dynamics.train.corpus import load_corpus

    docs = [f"document {i}: " + "word " * (20 + i) for i in range(40)]
    (tmp_path / "ds").mkdir()
    pd.DataFrame({"body": docs}).to_parquet(tmp_path / "ds" / "train.parquet")
    config = tiny_test_config(corpus="hf-dataset", corpus_dataset=str(tmp_path / "ds"), corpus_text_field="body", corpus_bytes=2_000)
    corpus = load_corpus(config)
    assert corpus.train_docs + corpus.heldout_docs != [] and set(corpus.train_docs + corpus.heldout_docs) <= set(docs)
    assert sum(len(d) for d in corpus.train_docs + corpus.heldout_docs) < 2_000 + len(docs[-1])
    with pytest.raises(ValueError, match="has no column 'text'"):
        load_corpus(config.replace(corpus_text_field="text"))
    with pytest.raises(ValueError, match="needs corpus_dataset"):
        tiny_test_config(corpus="hf-dataset")
