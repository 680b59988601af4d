"""The Pythia suite as published on the Hugging Face Hub: model names, schedules, learning rates.

Sources: Biderman et al. 2023 ("Pythia", tables 1 and 6, and the released GPT-NeoX configs), the
EleutherAI model cards, and van der Wal et al. 2025 ("PolyPythias") for the extra seeds. The table is
data, not logic: correct it here if EleutherAI publishes more.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from dataclasses import dataclass, field

from pythia_dynamics.schedule import PYTHIA_STEPS, PYTHIA_V0_STEPS

__all__ = [
    "KNOWN_DEFECTS",
    "KnownDefect",
    "MODEL_GROUPS",
    "PythiaModel",
    "UnknownModelError",
    "all_pythia_names",
    "known_defects",
    "resolve_pythia",
]

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
# PolyPythias' 160m runs that vary one source of randomness only: the data order (-data-seedN) or the
# initial weights (-weight-seedN). Only the repositories seen on the Hub are listed (docs/suites.md).
DECOUPLED_SEEDS = {"data-seed": (1, 2, 3), "weight-seed": (1,)}
# The sizes the first release (and the source study) named its models by, before EleutherAI renamed
# them by total parameter count. Those weights are today's -v0 models: the suite was retrained later,
# and the retrained models took the plain names (EleutherAI's Pythia README).
LEGACY_SIZE_NAMES = {
    "19m": "70m", "125m": "160m", "350m": "410m", "800m": "1b",
    "1.3b": "1.4b", "2.7b": "2.8b", "6.7b": "6.9b", "13b": "12b",
}  # fmt: skip
_LEGACY_NAME = re.compile(r"^pythia-(?P<size>[\d.]+[mb])(?P<deduped>-deduped)?(?:-v0)?$")


class UnknownModelError(ValueError):
    """A model name that is not in the Pythia suite; `close` holds the nearest known names."""

    close: tuple[str, ...] = ()


@dataclass(frozen=True)
class PythiaModel:
    size: str
    deduped: bool = False
    v0: bool = False
    seed: int | None = None
    seed_kind: str = "seed"  # "data-seed" / "weight-seed": a PolyPythias run varying that alone

    @property
    def name(self) -> str:
        return (
            f"pythia-{self.size}"
            + ("-deduped" if self.deduped else "")
            + (f"-{self.seed_kind}{self.seed}" if self.seed is not None else "")
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


# The suite as `pythia-dynamics models` lists it: every model is in exactly one group.
MODEL_GROUPS: dict[str, list[PythiaModel]] = {
    "sizes": [PythiaModel(size) for size in PEAK_LR],
    "trained on the deduplicated Pile (-deduped)": [PythiaModel(size, deduped=True) for size in DEDUPED_SIZES],
    "the first release, retrained later (-v0)": [PythiaModel(size, v0=True) for size in V0_SIZES],
    "the first release, deduplicated (-deduped-v0)": [PythiaModel(size, deduped=True, v0=True) for size in V0_SIZES],
    "PolyPythias: nine more seeds of the five smallest (-seedN)": [
        PythiaModel(size, seed=seed) for size in SEEDED_SIZES for seed in SEEDS
    ],
    "PolyPythias: 160m varying only the data order or only the initial weights": [
        PythiaModel("160m", seed=seed, seed_kind=kind) for kind, seeds in DECOUPLED_SEEDS.items() for seed in seeds
    ],
}
_CATALOG = {model.name: model for group in MODEL_GROUPS.values() for model in group}


def all_pythia_names() -> list[str]:
    return list(_CATALOG)


def resolve_pythia(name: str) -> PythiaModel:
    """Accept 'pythia-70m' or 'EleutherAI/pythia-70m', and the first release's names ('pythia-19m')."""
    short = name.strip()
    if short.lower().startswith(HUB_ORG.lower() + "/"):
        short = short.split("/", 1)[1]
    short = short.lower()
    if short in _CATALOG:
        return _CATALOG[short]
    if legacy := _resolve_legacy(short):
        log.info("%s is the first release's name for %s (the later, retrained model is %s)",
                 name, legacy.name, PythiaModel(legacy.size, legacy.deduped).name)  # fmt: skip
        return legacy
    close = difflib.get_close_matches(short, _CATALOG, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    error = UnknownModelError(
        f"{name!r} is not a Pythia model.{hint} `pythia-dynamics models` lists the known models "
        f"(with or without '{HUB_ORG}/'); for a suite of your own, pass its folder."
    )
    error.close = tuple(close)
    raise error


def _resolve_legacy(short: str) -> PythiaModel | None:
    """'pythia-19m' and 'pythia-19m-deduped' (with or without '-v0'): the -v0 model with those weights."""
    m = _LEGACY_NAME.match(short)
    if not m or m["size"] not in LEGACY_SIZE_NAMES:
        return None
    return PythiaModel(LEGACY_SIZE_NAMES[m["size"]], deduped=bool(m["deduped"]), v0=True)


@dataclass(frozen=True)
class KnownDefect:
    """A defect of published checkpoints, as reported in an EleutherAI/pythia issue.

    `models` is a regular expression matched against the whole model name (without 'EleutherAI/');
    `steps` are the affected steps where the report names them (empty: the report names none), and
    `step_range` an inclusive range where it gives one. Only what the report states is recorded.
    """

    issue: int
    kind: str  # identical | final-era | shard | missing | wrong-start | reuploaded
    summary: str
    models: str
    steps: tuple[int, ...] = ()
    step_range: tuple[int, int] | None = None
    scope: str = field(default="", compare=False)  # where the report leaves the models open, say so

    @property
    def url(self) -> str:
        return f"https://github.com/EleutherAI/pythia/issues/{self.issue}"

    def applies_to(self, model: str) -> bool:
        short = model.split("/", 1)[1] if model.lower().startswith(HUB_ORG.lower() + "/") else model
        return re.fullmatch(self.models, short.lower()) is not None

    def affected_steps(self, schedule: list[int]) -> list[int]:
        """The steps of `schedule` this defect names (none when the report does not say which)."""
        named = [s for s in schedule if s in self.steps]
        if self.step_range is not None:
            low, high = self.step_range
            named += [s for s in schedule if low <= s <= high and s not in named]
        return sorted(named)


# From the issue reports (and the project's field notes); correct them here when EleutherAI fixes a branch.
_ANY_PYTHIA = r"pythia-.*"
KNOWN_DEFECTS: tuple[KnownDefect, ...] = (
    KnownDefect(83, "identical", "step0 and step1 hold identical weights, for every model", _ANY_PYTHIA, steps=(1,)),
    KnownDefect(198, "identical", "steps 0 and 2 hold identical weights", _ANY_PYTHIA, steps=(2,),
                scope="the report's model list is not recorded here; flagged for every model whose schedule has step 2"),
    KnownDefect(195, "identical", "pythia-2.8b: steps 0 to 6300 hold identical weights", r"pythia-2\.8b",
                step_range=(1, 6300)),
    KnownDefect(205, "final-era", "pythia-2.8b: 86 of its 154 branches serve final-era weights", r"pythia-2\.8b",
                scope="the branches are not listed here: compare the Hub's file hashes (audit --hub) to find them"),
    KnownDefect(206, "shard", "pythia-12b: step50000 and step58000 serve the final model's first shard",
                r"pythia-12b", steps=(50000, 58000)),
    KnownDefect(202, "missing", "PolyPythias: some pythia-410m seed checkpoints are missing", r"pythia-410m-seed\d+",
                scope="which seeds and steps is not recorded here"),
    KnownDefect(203, "wrong-start", "weight-seed runs do not continue from their own step0", r"pythia-.*weight-seed\d+"),
    KnownDefect(108, "reuploaded", "pythia-12b-deduped step32000 was bad and re-uploaded; a cache filled before "
                "the fix may still hold the bad file", r"pythia-12b-deduped", steps=(32000,)),
)  # fmt: skip


def known_defects(model: str) -> list[KnownDefect]:
    """The published defects that concern `model` ('pythia-2.8b' or 'EleutherAI/pythia-2.8b')."""
    return [defect for defect in KNOWN_DEFECTS if defect.applies_to(model)]
