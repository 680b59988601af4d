import logging
import shutil

import numpy as np
import pytest
import torch

from pythia_dynamics.evalbatch import make_eval_batch
from pythia_dynamics.sources import HubSource, LocalSuite, write_hub_cache
from pythia_dynamics.store import Store
from pythia_dynamics.sweeps import sweep


def test_local_suite_batch_is_fixed_and_from_heldout_text(tiny_suite):
    suite = LocalSuite(tiny_suite)
    a = make_eval_batch(suite, n_sequences=4, seq_len=16, seed=3)
    b = make_eval_batch(suite, n_sequences=4, seq_len=16, seed=3)
    assert a.tokens.shape == (4, 16) and torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, make_eval_batch(suite, n_sequences=4, seq_len=16, seed=4).tokens)
    assert a.origin["kind"] == "suite-heldout" and a.origin["seed"] == 3
    heldout = suite.tokenizer()((tiny_suite / "heldout.txt").read_text())["input_ids"]
    first = a.tokens[0].tolist()
    assert any(heldout[i : i + 16] == first for i in range(len(heldout) - 15))


def test_user_text_and_token_ids(tiny_suite, tmp_path):
    suite = LocalSuite(tiny_suite)
    (tmp_path / "text.txt").write_text("def f(x):\n    return x + 1\n" * 50)
    batch = make_eval_batch(suite, text_file=tmp_path / "text.txt", n_sequences=2, seq_len=8)
    assert batch.origin["kind"] == "text-file" and batch.tokens.shape == (2, 8)
    np.save(tmp_path / "ids.npy", np.arange(12).reshape(3, 4))
    assert make_eval_batch(suite, token_ids=tmp_path / "ids.npy").tokens.tolist()[2] == [8, 9, 10, 11]
    (tmp_path / "ids.txt").write_text("1 2 3\n4 5 6\n")
    assert make_eval_batch(suite, token_ids=tmp_path / "ids.txt").tokens.shape == (2, 3)
    (tmp_path / "ragged.txt").write_text("1 2 3\n4 5\n")
    with pytest.raises(ValueError, match="same number of token ids"):
        make_eval_batch(suite, token_ids=tmp_path / "ragged.txt")
    with pytest.raises(ValueError, match="too few for 5000 windows"):
        make_eval_batch(suite, text_file=tmp_path / "text.txt", n_sequences=5000)


def test_hub_model_offline_falls_back_and_says_so(tiny_suite, tmp_path, caplog):
    step_dir = tmp_path / "step0"
    shutil.copytree(tiny_suite / "step0", step_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_suite / name, step_dir / name)
    write_hub_cache(tmp_path / "cache", "EleutherAI/pythia-14m", {"step0": step_dir, "step1": step_dir})
    source = HubSource("pythia-14m", cache_dir=tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        summary = sweep(source, tmp_path / "store", steps="0,1", analyses="eval_loss", progress=False)
    assert "offline fallback" in caplog.text
    origin = Store(tmp_path / "store").source_meta("EleutherAI/pythia-14m")["eval_batch"]["origin"]
    assert origin["kind"] == "offline-fallback-stdlib"
    assert summary.done == [0, 1] and summary.duplicates == [(1, 0)]
    assert "step 1 has weights identical to step 0" in str(summary)
