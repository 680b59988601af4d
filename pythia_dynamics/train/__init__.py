"""Train a mini Pythia-recipe checkpoint suite, offline and deterministically.

    from pythia_dynamics.train import ensure_default_suite
    root = ensure_default_suite()          # trains once (~3 min on 2 CPU cores), then reuses the cache
    # root/step{N}/ are GPT-NeoX checkpoints; root/suite.json describes the run
"""

import importlib
from typing import TYPE_CHECKING

from pythia_dynamics.schedule import pythia_like_schedule
from pythia_dynamics.train.config import SuiteConfig

if TYPE_CHECKING:
    from pythia_dynamics.train.loop import train_suite
    from pythia_dynamics.train.recipe import lr_at
    from pythia_dynamics.train.suite import (
        INDUCTION_SUITE_CONFIG,
        TINY_TEST_CONFIG,
        default_suite_dir,
        demo_suite_configs,
        ensure_default_suite,
        tiny_test_config,
    )

__all__ = [
    "SuiteConfig",
    "train_suite",
    "ensure_default_suite",
    "default_suite_dir",
    "pythia_like_schedule",
    "lr_at",
    "tiny_test_config",
    "TINY_TEST_CONFIG",
    "INDUCTION_SUITE_CONFIG",
    "demo_suite_configs",
]

# Imported on first use: they import torch, and the command line reads SuiteConfig without it.
_LAZY = {
    "train_suite": "loop",
    "lr_at": "recipe",
    "TINY_TEST_CONFIG": "suite",
    "default_suite_dir": "suite",
    "ensure_default_suite": "suite",
    "tiny_test_config": "suite",
    "INDUCTION_SUITE_CONFIG": "suite",
    "demo_suite_configs": "suite",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
