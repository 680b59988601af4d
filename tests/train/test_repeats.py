"""Repeated random spans mixed into the training batches (SuiteConfig.repeat_*): planted data, determinism, default."""

import json

import numpy as np
import pytest
import torch

from pythia_dynamics.train import SuiteConfig, tiny_test_config, train_suite
from pythia_dynamics.train import loop

EOS = 9


def _stream(n: int = 5000, vocab: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=n)


def _period(row: torch.Tensor) -> int:
    """The smallest p with row[i] == row[i - p] for every i >= p."""
    for p in range(1, len(row)):
        if torch.equal(row[p:], row[:-p]):
            return p
    return len(row)


def test_pool_is_the_most_frequent_ids_without_eos_ties_to_the_lower_id():
    # planted counts: id 9 (EOS) most frequent, then 4 (x5), then 2 and 7 tied (x3), then 0 (x1)
    tokens = np.array([9] * 8 + [4] * 5 + [7] * 3 + [2] * 3 + [0])
    assert loop.repeat_pool(tokens, 3, 10, EOS).tolist() == [4, 2, 7]
    assert loop.repeat_pool(tokens, 0, 10, EOS).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_spans_repeat_with_a_drawn_period_and_distinct_ids_from_the_pool():
    pool = np.arange(100, 120)
    rows = loop.repeated_spans(pool, np.random.default_rng(0), 400, (3, 9), 40)
    assert rows.shape == (400, 41) and rows.dtype == torch.int64
    assert set(rows.unique().tolist()) <= set(pool.tolist())
    periods = [_period(r) for r in rows]
    # distinct ids in a span: the row's smallest period is exactly the span's length
    assert all(3 <= p <= 9 for p in periods)
    assert all(len(set(r[:p].tolist())) == p for r, p in zip(rows, periods))
    lengths = set(periods)
    assert lengths == set(range(3, 10)), "lengths are drawn over the whole range, ends included"
    fixed = loop.repeated_spans(pool, np.random.default_rng(1), 50, (8, 8), 40)
    assert all(_period(r) == 8 for r in fixed)


def test_a_pool_smaller_than_a_span_is_refused():
    with pytest.raises(ValueError, match="cannot fill a span of 9 distinct ids"):
        loop.repeated_spans(np.arange(5), np.random.default_rng(0), 2, (3, 9), 40)


def test_default_batches_are_the_plain_text_windows():
    config = tiny_test_config()
    assert config.repeat_fraction == 0.0 and config.repeat_rows == 0
    assert SuiteConfig().repeat_fraction == 0.0
    tokens = _stream()
    batches = loop.training_batches(config, tokens, EOS)
    rng = np.random.default_rng([config.seed, loop.BATCH_STREAM])
    for _ in range(3):
        assert torch.equal(next(batches), loop._sample_batch(torch.from_numpy(tokens), rng, config.batch_size, config.seq_len))


def test_repeat_fraction_replaces_the_first_rows_and_leaves_the_text_rows_alone():
    config = tiny_test_config(repeat_fraction=0.25, repeat_vocab=10, repeat_min_len=4, repeat_len=10)
    assert config.repeat_rows == 2  # round(0.25 * 8)
    tokens = _stream()
    tokens = np.concatenate([tokens, np.arange(20, 40)])  # ids 20-39 occur once, so the pool is ids 0-8 and 10
    pool = set(loop.repeat_pool(tokens, 10, config.vocab_size, EOS).tolist())
    assert pool == {0, 1, 2, 3, 4, 5, 6, 7, 8, 20}
    mixed = loop.training_batches(config, tokens, EOS)
    plain = loop.training_batches(config.replace(repeat_fraction=0.0), tokens, EOS)
    for _ in range(5):
        a, b = next(mixed), next(plain)
        assert a.shape == b.shape == (config.batch_size, config.seq_len + 1)
        assert torch.equal(a[2:], b[2:])
        for row in a[:2]:
            assert set(row.tolist()) <= pool
            assert 4 <= _period(row) <= 10
        assert not torch.equal(a[:2], b[:2])


def test_batches_are_deterministic_per_seed():
    config = tiny_test_config(repeat_fraction=0.5, repeat_len=16)
    tokens = _stream()
    a, b = loop.training_batches(config, tokens, EOS), loop.training_batches(config, tokens, EOS)
    c = loop.training_batches(config.replace(seed=1), tokens, EOS)
    first = [next(a) for _ in range(4)]
    assert all(torch.equal(x, next(b)) for x in first)
    assert not all(torch.equal(x, next(c)) for x in first)


def test_a_whole_batch_of_spans():
    config = tiny_test_config(repeat_fraction=1.0, repeat_min_len=5, repeat_len=5)
    batch = next(loop.training_batches(config, _stream(), EOS))
    assert all(_period(r) == 5 for r in batch)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"repeat_fraction": 1.5}, "repeat_fraction"),
        ({"repeat_fraction": -0.1}, "repeat_fraction"),
        ({"repeat_fraction": 0.5, "repeat_vocab": 384}, "repeat_vocab"),
        ({"repeat_fraction": 0.5, "repeat_vocab": -1}, "repeat_vocab"),
        ({"repeat_fraction": 0.5, "repeat_vocab": 15, "repeat_len": 16}, "a span holds distinct ids"),
        ({"repeat_fraction": 0.5, "repeat_min_len": 9, "repeat_len": 8}, "repeat_min_len"),
        ({"repeat_fraction": 0.5, "repeat_min_len": 4, "repeat_len": 17}, "seq_len // 2 = 16"),
        ({"repeat_fraction": 0.5, "repeat_min_len": 0, "repeat_len": 8}, "repeat_min_len"),
    ],
)
def test_bad_span_fields_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny_test_config(**changes)


def test_span_fields_are_not_checked_while_spans_are_off():
    # the default spans (up to 48 long) do not fit the tiny config's 32-token context: fine while off
    assert tiny_test_config().repeat_len > tiny_test_config().seq_len // 2


def test_suite_with_spans_is_reproducible_and_differs_from_the_plain_one(tmp_path):
    config = tiny_test_config(repeat_fraction=0.25, repeat_min_len=4, repeat_len=12)
    a = train_suite(config, tmp_path / "a", progress=False)
    b = train_suite(config, tmp_path / "b", progress=False)
    plain = train_suite(config.replace(repeat_fraction=0.0), tmp_path / "plain", progress=False)
    last = f"step{config.total_steps}/model.safetensors"
    assert (a / last).read_bytes() == (b / last).read_bytes()
    assert (a / "suite.json").read_bytes() == (b / "suite.json").read_bytes()
    assert (a / last).read_bytes() != (plain / last).read_bytes()
    recorded = json.loads((a / "suite.json").read_text())["config"]
    assert SuiteConfig.from_dict(recorded) == config


def test_default_config_keeps_its_dict_and_cache_folder():
    # suites written before the span fields existed must still match the default config
    from pythia_dynamics.train.config import LATER_FIELDS
    from pythia_dynamics.train.suite import config_hash

    default = SuiteConfig().to_dict()
    assert not set(LATER_FIELDS) & set(default)
    assert SuiteConfig.from_dict(json.loads(json.dumps(default))) == SuiteConfig()
    on = SuiteConfig(repeat_fraction=0.25)
    assert set(LATER_FIELDS) <= set(on.to_dict())
    assert SuiteConfig.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    assert config_hash(on) != config_hash(SuiteConfig())
    # a non-default span field alone (spans still off) is kept too, so the dict round-trips exactly
    odd = SuiteConfig(repeat_vocab=100)
    assert SuiteConfig.from_dict(odd.to_dict()) == odd
