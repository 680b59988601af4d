"""With no network or HF_HUB_OFFLINE set, Hub sources fail at once, naming what is missing and how to get it.

In this process HF_HUB_OFFLINE=1 (tests/conftest.py sets it before huggingface_hub is imported). Runs that
need it unset start a fresh interpreter whose Hub endpoint is a local port nothing listens on, and count
the connections it tries: one probe, not huggingface_hub's five retries with back-off per file.
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pandas as pd
import pytest

from pythia_dynamics.evalbatch import PILE_SAMPLE_REPO, make_eval_batch
from pythia_dynamics.loading import load_checkpoint
from pythia_dynamics.sources import CheckpointUnavailableError, HubSource, LocalSuite, write_hub_cache
from pythia_dynamics.sources.hub import CheckpointsNotCachedError
from pythia_dynamics.sweeps import sweep

HOW_TO = ("hf download EleutherAI/pythia-70m --revision", "write_hub_cache", "local suite folder")


def test_offline_with_an_empty_cache_fails_at_once_and_writes_nothing(tmp_path):
    source = HubSource("pythia-70m", cache_dir=tmp_path / "empty-cache")
    with pytest.raises(CheckpointsNotCachedError) as caught:
        source.preflight(source.select("last"))
    message = str(caught.value)
    assert "EleutherAI/pythia-70m@step143000" in message and "HF_HUB_OFFLINE is set" in message
    assert "Cached revisions of EleutherAI/pythia-70m: none" in message and "--steps" not in message
    assert all(hint in message for hint in HOW_TO), message
    assert caught.value.missing == [143000] and isinstance(caught.value, CheckpointUnavailableError)
    with pytest.raises(CheckpointsNotCachedError, match="1 of the 1 selected checkpoint"):
        load_checkpoint(source, 143000)
    with pytest.raises(CheckpointsNotCachedError, match="154 of the 154 selected"):
        sweep(source, tmp_path / "store", analyses="weight_norms,eval_loss", progress=False)
    assert not (tmp_path / "store").exists()


def test_the_cli_offline_with_nothing_cached_names_the_missing_revisions(tmp_path):
    env = os.environ | {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pythia_dynamics.cli", "sweep", "pythia-70m", "--out", str(tmp_path / "store")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "154 of the 154 selected checkpoint(s) are not in the Hugging Face cache" in done.stderr
    assert "EleutherAI/pythia-70m@step0" in done.stderr and "HF_HUB_OFFLINE is set" in done.stderr
    assert all(hint in done.stderr for hint in HOW_TO), done.stderr
    assert "tokenizer" not in done.stderr  # the old symptom: blaming a missing tokenizer
    assert not (tmp_path / "store").exists()


def test_a_partial_cache_names_only_the_missing_revisions(random_suite, tmp_path):
    write_hub_cache(tmp_path, "EleutherAI/pythia-70m", {f"step{s}": random_suite / f"step{s}" for s in (0, 1, 2)})
    source = HubSource("pythia-70m", cache_dir=tmp_path)
    with pytest.raises(CheckpointsNotCachedError) as caught:
        source.preflight([0, 2, 4, 8])
    message = str(caught.value)
    assert caught.value.missing == [4, 8]
    assert "2 of the 4 selected" in message and "@step4, EleutherAI/pythia-70m@step8;" in message
    assert "@step0" not in message.split(";")[0] and "3 revision(s) (step0, step1, step2)" in message
    assert "select cached steps only (--steps)" in message
    source.preflight([0, 1, 2])  # all cached: passes with no network


def test_a_revision_missing_a_shard_is_not_cached(sharded_checkpoint, tmp_path):
    folder, _ = sharded_checkpoint
    write_hub_cache(tmp_path / "cache", "EleutherAI/pythia-70m", {"step8": folder})
    source = HubSource("pythia-70m", cache_dir=tmp_path / "cache")
    source.preflight([8])
    (folder / "model-00002-of-00002.safetensors").unlink()
    write_hub_cache(tmp_path / "half", "EleutherAI/pythia-70m", {"step8": folder})
    with pytest.raises(CheckpointsNotCachedError, match="EleutherAI/pythia-70m@step8"):
        HubSource("pythia-70m", cache_dir=tmp_path / "half").preflight([8])


def test_a_cache_without_main_loads_offline(random_suite, tmp_path, backend):
    # `hf download --revision step8` caches refs/step8 only: the config and tokenizer come from there.
    repo = write_hub_cache(tmp_path, "EleutherAI/pythia-70m", {"step8": random_suite / "step8"})
    (repo / "refs" / "main").unlink()
    source = HubSource("pythia-70m", cache_dir=tmp_path)
    source.preflight([8])
    assert source.hf_config().hidden_size == LocalSuite(random_suite).hf_config().hidden_size
    assert load_checkpoint(source, 8, backend=backend).id.content_hash == load_checkpoint(random_suite, 8).id.content_hash


@pytest.fixture
def hub_cache_with_tokenizer(tiny_suite, tmp_path):
    """pythia-14m at step0 in a Hub cache, with the trained mini suite's weights and tokenizer."""
    step_dir = shutil.copytree(tiny_suite / "step0", tmp_path / "step0")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_suite / name, step_dir / name)
    write_hub_cache(tmp_path / "hub", "EleutherAI/pythia-14m", {"step0": step_dir})
    return tmp_path / "hub"


@pytest.fixture
def connections(monkeypatch):
    """Every TCP connection this process tries."""
    tried = []
    connect = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: tried.append(address) or connect(address, *a, **k))
    return tried


def test_the_eval_batch_offline_falls_back_at_once_saying_why(hub_cache_with_tokenizer, connections, caplog):
    source = HubSource("pythia-14m", cache_dir=hub_cache_with_tokenizer)
    with caplog.at_level(logging.WARNING):
        batch = make_eval_batch(source, n_sequences=2, seq_len=16)
    assert batch.origin["kind"] == "offline-fallback-stdlib"
    assert "HF_HUB_OFFLINE is set" in batch.origin["reason"] and "HF_HUB_OFFLINE is set" in caplog.text
    assert connections == []


def test_the_eval_batch_offline_uses_a_cached_pile_sample(hub_cache_with_tokenizer, tmp_path, monkeypatch, connections):
    from huggingface_hub import constants

    folder = tmp_path / "pile"
    folder.mkdir()
    texts = [f"document {i}: " + "the quick brown fox jumps over the lazy dog " * 20 for i in range(5)]
    pd.DataFrame({"text": texts}).to_parquet(folder / "train.parquet")
    write_hub_cache(tmp_path / "default-cache", PILE_SAMPLE_REPO, {"main": folder}, repo_type="dataset")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))
    batch = make_eval_batch(HubSource("pythia-14m", cache_dir=hub_cache_with_tokenizer), n_sequences=2, seq_len=16)
    assert batch.origin == batch.origin | {"kind": "pile-sample", "repo": PILE_SAMPLE_REPO, "file": "train.parquet"}
    assert connections == []


# HF_HUB_OFFLINE unset, the Hub at a port where nothing listens: every connection is refused at once.
UNREACHABLE = """
import json, socket, sys
tried = []
connect = socket.create_connection
socket.create_connection = lambda address, *a, **k: tried.append(address) or connect(address, *a, **k)

from pythia_dynamics.evalbatch import make_eval_batch
from pythia_dynamics.sources import HubSource

source = HubSource("pythia-14m")
result = {"preflight": None}
try:
    source.preflight([0, 1000])
except Exception as error:
    result["preflight"] = f"{type(error).__name__}: {error}"
result["preflight_connections"] = len(tried)
batch = make_eval_batch(source, n_sequences=2, seq_len=16)
result |= {"origin": batch.origin["kind"], "reason": batch.origin.get("reason"), "connections": len(tried)}
print(json.dumps(result))
"""


def test_an_unreachable_hub_is_probed_once_not_retried(hub_cache_with_tokenizer):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(hub_cache_with_tokenizer)}
    done = subprocess.run([sys.executable, "-c", UNREACHABLE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["preflight"].startswith("CheckpointsNotCachedError: 1 of the 2 selected"), result
    assert "EleutherAI/pythia-14m@step1000" in result["preflight"] and "@step0," not in result["preflight"]
    assert f"the Hub (http://127.0.0.1:{port}) cannot be reached" in result["preflight"]
    assert result["preflight_connections"] == 1  # one probe; the cached step0 needed none
    # The tokenizer and config come from the cache; the Pile sample is probed once, then the fallback.
    assert result["origin"] == "offline-fallback-stdlib" and "cannot be reached" in result["reason"]
    assert result["connections"] == 2


def test_a_suite_sweep_offline_with_nothing_cached_fails_at_once(tmp_path, monkeypatch, capsys):
    # A suite whose schedule comes from its branch list: offline with an empty cache there is no list.
    from huggingface_hub import constants

    from pythia_dynamics.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["sweep", "olmo-1b", "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "no branch of allenai/OLMo-1B-hf is known" in err and "named like step{step}-tokens{tokens}B" in err
    assert "HF_HUB_OFFLINE is set" in err and "hf download allenai/OLMo-1B-hf --revision <branch>" in err
    assert "local suite folder" in err
    assert not (tmp_path / "store").exists()


def test_a_sweep_reads_a_hub_repo_by_its_revision_pattern_offline(random_suite, tmp_path, backend):
    # Any repository's own branch naming, end to end: the loader gets each step's real branch.
    branches = {f"step{s}-tokens{s}B": random_suite / f"step{s}" for s in (0, 2, 4)}
    write_hub_cache(tmp_path / "hub", "org/neox-run", branches)
    source = HubSource("hub:org/neox-run", revision_pattern="step{step}-tokens{tokens}B", cache_dir=tmp_path / "hub")
    summary = sweep(source, tmp_path / "store", steps="tokens:1B-", analyses="weight_norms", backend=backend, progress=False)
    assert not summary.failed
    from pythia_dynamics.store import Store

    store = Store(tmp_path / "store")
    assert sorted({r.step for r in store.results("org/neox-run")}) == [2, 4]
    meta = store.source_meta("org/neox-run")["metadata"]
    assert meta["tokens_seen"] == {"0": 0, "2": 2 * 10**9, "4": 4 * 10**9} and meta["suite"] == "hub"
    assert load_checkpoint(source, 4).id.content_hash == load_checkpoint(random_suite, 4).id.content_hash
