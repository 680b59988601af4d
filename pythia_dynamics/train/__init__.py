"""Train a mini Pythia-recipe checkpoint suite, offline and deterministically.

    from pythia_dynamics.train import ensure_default_suite
    root = ensure_default_suite()          # trains once (~3 min on 2 CPU cores), then reuses the cache
    # root/step{N}/ are GPT-NeoX checkpoints; root/suite.json describes the run
"""

from .loop import train_suite
from .recipe import SuiteConfig, lr_at, pythia_like_schedule
from .suite import TINY_TEST_CONFIG, default_suite_dir, ensure_default_suite, tiny_test_config

__all__ = [
    "SuiteConfig",
    "train_suite",
    "ensure_default_suite",
    "default_suite_dir",
    "pythia_like_schedule",
    "lr_at",
    "tiny_test_config",
    "TINY_TEST_CONFIG",
]
