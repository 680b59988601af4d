"""Where the default suite lives, building it on first use, and the tiny config for tests."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path

import platformdirs

from .loop import read_suite, train_suite
from .recipe import SuiteConfig

logger = logging.getLogger(__name__)

CACHE_ENV = "PYTHIA_DYNAMICS_CACHE"

TINY_TEST_CONFIG = SuiteConfig(
    name="tiny-test",
    corpus_bytes=300_000,  # ~160 k tokens at this vocab; reading it is most of the build time
    heldout_fraction=0.05,  # at least one file is held out whatever the fraction
    heldout_max_bytes=50_000,
    vocab_size=384,  # 256 bytes, 127 merges, <|endoftext|>
    n_layers=2,
    d_model=32,
    n_heads=4,
    d_mlp=128,
    seq_len=32,
    batch_size=8,
    total_steps=40,
    n_evenly_spaced=4,  # steps 0, 1, 2, 4, 8, 10, 20, 30, 40
    peak_lr=1e-2,  # large enough that 40 steps take held-out loss below the unigram entropy
    loss_every=5,
    eval_tokens=4_096,
)


# The demo's second suite: a smaller model whose training batches are half repeated random spans, so that an
# induction head forms inside the schedule (docs/circuits.md, "The embedded suites"). The default suite keeps
# Pythia's recipe and its phenomena; no recipe tried at its size formed an induction head within its budget.
INDUCTION_SUITE_CONFIG = SuiteConfig(
    name="mini-pythia-induction",
    seed=1,  # seed 0 forms its head too, at ~80% of training; seed 1 at ~55%, leaving a plateau after it
    vocab_size=512,  # 256 bytes + 255 merges + EOS: a small unembedding makes a step ~4x cheaper than at 4,096
    n_layers=2,  # the fewest an induction circuit needs (a previous-token head, then the induction head)
    d_model=64,
    n_heads=4,
    d_mlp=256,
    seq_len=64,  # head_scores' probe then repeats T = (64 - 1) // 2 = 31 ids: a distance the spans teach
    rotary_pct=1.0,  # every head dimension rotates: positional signal for the previous-token head
    batch_size=64,  # 4,096 tokens a step, as many spans per step as rows of text
    total_steps=3_000,
    peak_lr=3e-3,
    weight_decay_timescale=0.0,  # no decay: measured to form the head; decay was not tried within the budget
    repeat_fraction=0.5,  # 32 of the 64 rows: `r r r ...` over every id but EOS, |r| drawn from 8..32
    repeat_vocab=0,  # the whole vocabulary, as the head_scores probe draws its ids
    repeat_min_len=8,
    repeat_len=32,  # at least two copies per row, and up to the probe's distance of 31
)
TINY_INDUCTION_CONFIG = TINY_TEST_CONFIG.replace(
    name="tiny-test-induction", rotary_pct=1.0, repeat_fraction=0.5, repeat_vocab=0, repeat_min_len=4, repeat_len=16,
)  # fmt: skip


def demo_suite_configs(tiny: bool = False) -> list[SuiteConfig]:
    """What `pythia-dynamics demo` trains: the default suite (Pythia's recipe) and the induction suite;
    `tiny`: their few-second test versions."""
    return [TINY_TEST_CONFIG, TINY_INDUCTION_CONFIG] if tiny else [SuiteConfig(), INDUCTION_SUITE_CONFIG]


def tiny_test_config(**changes) -> SuiteConfig:
    """A config that trains in a few seconds, for tests; keyword arguments override fields."""
    return TINY_TEST_CONFIG.replace(**changes) if changes else TINY_TEST_CONFIG


def config_hash(config: SuiteConfig) -> str:
    # The Python version is part of the key: the default corpus is that interpreter's standard library.
    blob = json.dumps({**config.to_dict(), "python": platform.python_version()}, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:10]


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("pythia_dynamics"))


def default_suite_dir(config: SuiteConfig | None = None) -> Path:
    """The cache folder for `config` (default: `SuiteConfig()`): `<cache>/suites/<name>-<config hash>`.

    The cache is `$PYTHIA_DYNAMICS_CACHE` if set, else the platform's user cache folder.
    """
    config = config or SuiteConfig()
    return cache_root() / "suites" / f"{config.name}-{config_hash(config)}"


def ensure_default_suite(config: SuiteConfig | None = None, *, progress: bool = True) -> Path:
    """The folder of a complete suite for `config`, training it first if the cache lacks it."""
    config = config or SuiteConfig()
    final = default_suite_dir(config)
    if final.exists():
        return train_suite(config, final, progress=progress)  # reuses it, or says why it cannot

    final.parent.mkdir(parents=True, exist_ok=True)
    # a sibling temp folder on the same file system: the rename is atomic, and an interrupted
    # run leaves only a ".partial" folder that never looks like a suite
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        train_suite(config, tmp, progress=progress)
        try:
            os.replace(tmp, final)
        except OSError:
            # another process finished the same suite first; keep theirs if it is complete
            if read_suite(final) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("suite ready in %s", final)
    return final
