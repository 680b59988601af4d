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
