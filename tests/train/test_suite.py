"""End-to-end: train the tiny suite (twice, to check determinism) and inspect what lands on disk."""

import json
import time

import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXForCausalLM

from pythia_dynamics import __version__
from pythia_dynamics.train import (
    SuiteConfig,
    default_suite_dir,
    ensure_default_suite,
    lr_at,
    tiny_test_config,
    train_suite,
)
from pythia_dynamics.train import loop
from pythia_dynamics.train.corpus import load_corpus
from pythia_dynamics.train.recipe import build_model
from pythia_dynamics.train.tokenizer import encode_text

CONFIG = tiny_test_config()


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """Two suites of one config, trained into different folders; also checks the caller's RNG is untouched."""
    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    a = train_suite(CONFIG, root / "a", progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)
    b = train_suite(CONFIG, root / "b", progress=False)
    return a, b


@pytest.fixture(scope="module")
def suite(suites):
    return suites[0]


def _meta(root):
    return json.loads((root / "suite.json").read_text())


def _heldout_loss(root, step, tokenizer):
    model = GPTNeoXForCausalLM.from_pretrained(root / f"step{step}")
    ids = encode_text(tokenizer, (root / "heldout.txt").read_text(encoding="utf-8"))
    return loop.evaluate_loss(model, loop.heldout_windows(ids, CONFIG.seq_len, CONFIG.eval_tokens))


def test_same_seed_gives_bitwise_identical_suites(suites):
    a, b = suites
    for step in CONFIG.checkpoint_steps:
        assert (a / f"step{step}" / "model.safetensors").read_bytes() == (
            b / f"step{step}" / "model.safetensors"
        ).read_bytes(), f"step{step} differs"
    for name in ("suite.json", "tokenizer.json", "heldout.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_layout_and_loading(suite):
    steps = CONFIG.checkpoint_steps
    assert sorted(p.name for p in suite.glob("step*")) == sorted(f"step{s}" for s in steps)
    assert not list(suite.glob(".*")), "temporary files left behind"
    written = [p for p in suite.rglob("*") if p.is_file()]
    assert max(p.stat().st_mtime_ns for p in written) == (suite / "suite.json").stat().st_mtime_ns

    tokenizer = AutoTokenizer.from_pretrained(suite)
    assert len(tokenizer) == CONFIG.vocab_size
    first = GPTNeoXForCausalLM.from_pretrained(suite / "step0")
    for step in steps[1:]:
        model = GPTNeoXForCausalLM.from_pretrained(suite / f"step{step}")
        assert model.config.vocab_size == len(tokenizer)
    last_state = model.state_dict()
    for name, tensor in first.state_dict().items():
        assert not torch.equal(tensor, last_state[name]), f"{name} never trained"


def test_step0_is_the_seeded_initialisation(suite):
    torch.manual_seed(CONFIG.seed)
    fresh = build_model(CONFIG, vocab_size=CONFIG.vocab_size, eos_token_id=CONFIG.vocab_size - 1)
    saved = GPTNeoXForCausalLM.from_pretrained(suite / "step0").state_dict()
    for name, tensor in fresh.state_dict().items():
        torch.testing.assert_close(saved[name], tensor, rtol=0, atol=0)


def test_suite_json_describes_the_run(suite):
    meta = _meta(suite)
    assert meta["format"] == "pythia-dynamics-suite/1"
    assert meta["name"] == CONFIG.name
    assert SuiteConfig.from_dict(meta["config"]) == CONFIG
    assert meta["checkpoint_steps"] == CONFIG.checkpoint_steps
    assert meta["weight_decay"] == pytest.approx(CONFIG.effective_weight_decay)
    assert meta["lr_wd_steps"] == pytest.approx(1.4)
    schedule = meta["lr_schedule"]
    assert schedule["kind"] == "linear-warmup-cosine"
    assert schedule["lr_at_checkpoint"] == {str(s): lr_at(s, CONFIG) for s in CONFIG.checkpoint_steps}
    assert schedule["min_lr"] == pytest.approx(CONFIG.peak_lr * CONFIG.min_lr_ratio)
    assert meta["corpus"]["kind"] == "stdlib" and meta["corpus"]["n_heldout_files"] >= 1
    assert meta["corpus"]["n_bytes"] <= CONFIG.corpus_bytes
    assert meta["tokenizer"]["byte_tokens"] == "ids 0-255 in byte order"
    assert meta["tokenizer"]["vocab_size"] == CONFIG.vocab_size
    rows = meta["loss_curve"]["rows"]
    assert rows[0][0] == 0 and rows[-1][0] == CONFIG.total_steps - 1
    assert rows[-1][1] < rows[0][1]
    assert meta["package_version"] == __version__
    assert meta["torch_version"] == torch.__version__
    assert (suite / "heldout.txt").stat().st_size <= CONFIG.heldout_max_bytes


def test_heldout_loss_falls_and_beats_the_unigram_baseline(suite):
    tokenizer = AutoTokenizer.from_pretrained(suite)
    meta = _meta(suite)
    start = _heldout_loss(suite, 0, tokenizer)
    end = _heldout_loss(suite, CONFIG.total_steps, tokenizer)
    assert start == pytest.approx(torch.log(torch.tensor(float(CONFIG.vocab_size))).item(), abs=0.1)
    assert end < start
    # heldout.txt re-tokenized after loading gives the loss that training recorded
    assert end == pytest.approx(meta["final_heldout_loss"], abs=1e-5)
    assert meta["final_heldout_loss"] < meta["unigram_entropy"] < start


def test_complete_suite_is_reused_without_training(suite, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("retrained a complete suite")

    monkeypatch.setattr(loop, "load_corpus", boom)
    before = {p: p.stat().st_mtime_ns for p in suite.rglob("*")}
    assert train_suite(CONFIG, suite, progress=False) == suite
    assert {p: p.stat().st_mtime_ns for p in suite.rglob("*")} == before


def test_refuses_a_folder_with_other_contents(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "load_corpus", lambda config: pytest.fail("started training"))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="delete it or pass another folder"):
        train_suite(CONFIG, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_refuses_a_suite_with_another_config(suite, monkeypatch):
    monkeypatch.setattr(loop, "load_corpus", lambda config: pytest.fail("started training"))
    with pytest.raises(FileExistsError, match="different config.*seed"):
        train_suite(tiny_test_config(seed=1), suite, progress=False)


def test_corpus_split_is_deterministic_and_disjoint():
    a, b = load_corpus(CONFIG), load_corpus(CONFIG)
    assert a.record == b.record and a.heldout_docs == b.heldout_docs
    assert not set(a.heldout_docs) & set(a.train_docs)
    other = load_corpus(tiny_test_config(seed=5))
    assert other.record["sha256"] != a.record["sha256"] or other.heldout_docs != a.heldout_docs


def test_user_files_corpus(tmp_path):
    for i in range(10):
        (tmp_path / f"doc{i}.md").write_text(f"# Doc {i}\n\nSome text, number {i}. Ünïcode too.\n" * 50)
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    corpus = load_corpus(SuiteConfig(corpus="files", corpus_paths=(str(tmp_path),), heldout_fraction=0.2))
    assert corpus.record["kind"] == "files"
    assert corpus.record["n_files"] == 10
    assert len(corpus.heldout_docs) == 2 and len(corpus.train_docs) == 8
    with pytest.raises(FileNotFoundError):
        load_corpus(SuiteConfig(corpus="files", corpus_paths=(str(tmp_path / "missing"),)))


def test_ensure_default_suite_builds_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHIA_DYNAMICS_CACHE", str(tmp_path))
    config = tiny_test_config(name="tiny-cache")
    target = default_suite_dir(config)
    assert target.parent == tmp_path / "suites" and target.name.startswith("tiny-cache-")
    assert default_suite_dir(tiny_test_config(name="tiny-cache", seed=1)) != target

    # an interrupted build leaves nothing that could pass for a suite
    real_save = loop._save_checkpoint

    def interrupted(model, folder):
        if folder.name == "step4":
            raise KeyboardInterrupt
        real_save(model, folder)

    monkeypatch.setattr(loop, "_save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_suite(config, progress=False)
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr(loop, "_save_checkpoint", real_save)

    assert ensure_default_suite(config, progress=False) == target
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    assert (target / "suite.json").is_file()
    started = time.perf_counter()
    assert ensure_default_suite(config, progress=False) == target
    assert time.perf_counter() - started < 1.0
