"""The Pythia suite as published on the Hugging Face Hub: model names, schedules, learning rates.

Sources: Biderman et al. 2023 ("Pythia", tables 1 and 6, and the released GPT-NeoX configs), the
EleutherAI model cards, and van der Wal et al. 2025 ("PolyPythias") for the extra seeds. The table is
data, not logic: correct it here if EleutherAI publishes more.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass

from pythia_dynamics.schedule import PYTHIA_STEPS, PYTHIA_V0_STEPS

__all__ = ["PythiaModel", "UnknownModelError", "all_pythia_names", "resolve_pythia"]

log = logging.getLogger(__name__)

HUB_ORG = "EleutherAI"
# Peak learning rates by size (Pythia paper, table 6). Warm-up is 1% of training in the released
# configs ("warmup": 0.01); cosine decay ends at 10% of the peak at step 143,000.
PEAK_LR = {
    "14m": 1e-3, "31m": 1e-3, "70m": 1e-3, "160m": 6e-4, "410m": 3e-4,
    "1b": 3e-4, "1.4b": 2e-4, "2.8b": 1.6e-4, "6.9b": 1.2e-4, "12b": 1.2e-4,
}  # fmt: skip
TOTAL_STEPS = 143_000
WARMUP_FRACTION = 0.01
MIN_LR_RATIO = 0.1
DEDUPED_SIZES = ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]
V0_SIZES = DEDUPED_SIZES
# PolyPythias: nine extra seeds for the five smallest sizes, trained on the standard (non-deduped) data.
SEEDED_SIZES = ["14m", "31m", "70m", "160m", "410m"]
SEEDS = range(1, 10)
# The names the first release (and the source study) used, before EleutherAI renamed by total size.
LEGACY_SIZE_NAMES = {"19m": "70m", "125m": "160m", "350m": "410m", "800m": "1b", "1.3b": "1.4b", "13b": "12b"}


class UnknownModelError(ValueError):
    """A model name that is not in the Pythia suite."""


@dataclass(frozen=True)
class PythiaModel:
    size: str
    deduped: bool = False
    v0: bool = False
    seed: int | None = None

    @property
    def name(self) -> str:
        return (
            f"pythia-{self.size}"
            + ("-deduped" if self.deduped else "")
            + (f"-seed{self.seed}" if self.seed is not None else "")
            + ("-v0" if self.v0 else "")
        )

    @property
    def repo_id(self) -> str:
        return f"{HUB_ORG}/{self.name}"

    @property
    def steps(self) -> list[int]:
        return list(PYTHIA_V0_STEPS if self.v0 else PYTHIA_STEPS)

    def lr_at(self, step: int) -> float:
        """Pythia's learning rate at a training step: linear warm-up, then cosine decay to 10%."""
        peak = PEAK_LR[self.size]
        warmup = WARMUP_FRACTION * TOTAL_STEPS
        if step < warmup:
            return peak * step / warmup
        progress = min((step - warmup) / (TOTAL_STEPS - warmup), 1.0)
        return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))

    def lr_schedule(self) -> dict:
        """The learning-rate record in the same shape a local suite's suite.json uses."""
        return {
            "kind": "linear-warmup-cosine",
            "peak_lr": PEAK_LR[self.size],
            "min_lr": PEAK_LR[self.size] * MIN_LR_RATIO,
            "warmup_steps": int(WARMUP_FRACTION * TOTAL_STEPS),
            "total_steps": TOTAL_STEPS,
            "lr_at_checkpoint": {str(s): self.lr_at(s) for s in self.steps},
            "provenance": "Pythia paper table 6 and the released GPT-NeoX configs (warmup 0.01)",
        }


def _catalog() -> dict[str, PythiaModel]:
    models = [PythiaModel(size) for size in PEAK_LR]
    models += [PythiaModel(size, deduped=True) for size in DEDUPED_SIZES]
    models += [PythiaModel(size, v0=True) for size in V0_SIZES]
    models += [PythiaModel(size, deduped=True, v0=True) for size in V0_SIZES]
    models += [PythiaModel(size, seed=seed) for size in SEEDED_SIZES for seed in SEEDS]
    return {m.name: m for m in models}


_CATALOG = _catalog()


def all_pythia_names() -> list[str]:
    return list(_CATALOG)


def resolve_pythia(name: str) -> PythiaModel:
    """Accept 'pythia-70m' or 'EleutherAI/pythia-70m' (and the first release's size names)."""
    short = name.strip()
    if short.lower().startswith(HUB_ORG.lower() + "/"):
        short = short.split("/", 1)[1]
    short = short.lower()
    if short in _CATALOG:
        return _CATALOG[short]
    for legacy, current in LEGACY_SIZE_NAMES.items():
        renamed = short.replace(f"pythia-{legacy}", f"pythia-{current}", 1)
        if renamed != short and renamed in _CATALOG:
            log.info("%s is the first release's name; EleutherAI now calls it %s", name, renamed)
            return _CATALOG[renamed]
    close = difflib.get_close_matches(short, _CATALOG, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"{name!r} is not a Pythia model.{hint} Valid names (with or without '{HUB_ORG}/'): "
        + ", ".join(_CATALOG)
        + ". For a suite of your own, pass its folder instead."
    )
