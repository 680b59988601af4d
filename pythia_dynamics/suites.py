"""Public checkpoint suites by name: Hub repositories, how their branches name checkpoints, what is known.

Data, not logic (the Pythia table itself stays in `catalog.py`). Each suite says which repositories hold
it, the short names users type, how a branch name maps to a training step (and to tokens seen, where the
name or the model card gives them), the architecture family its config.json declares, and what is known
about its schedule. Every naming here was checked against the suite's model card; docs/suites.md cites
the cards. Correct this table when a publisher renames or adds branches.

A revision pattern is a branch-name template: literal text plus the fields `{step}` (the training step;
`{step:03d}` for a zero-padded one), `{tokens}` (tokens seen, in the unit the literal after it names:
`{tokens}B` is billions) and any other `{name}` (digits, e.g. `{ingredient}`), which label the series a
branch belongs to. Within one series steps are unique; a source reads one series at a time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "KNOWN_PATTERNS",
    "FoundModel",
    "Revision",
    "RevisionPattern",
    "SUITES",
    "Suite",
    "SuiteModel",
    "all_suite_names",
    "close_suite_names",
    "find_suite_model",
    "parse_branch",
    "parse_revisions",
    "series_of",
]

# Where a branch name carries tokens seen, the letter after `{tokens}` is the unit.
TOKEN_UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_FIELD = re.compile(r"\{(?P<name>[A-Za-z_]+)(?::(?P<spec>0\d+d))?\}")


@dataclass(frozen=True)
class Revision:
    """One checkpoint branch, parsed: its name, training step, series, and tokens seen (None: not stated)."""

    name: str
    step: int
    series: str = ""
    tokens: int | None = None


@dataclass(frozen=True)
class RevisionPattern:
    """A branch-name template such as 'step{step}-tokens{tokens}B' (see the module docstring).

    `series` names the series a matching branch belongs to; it may use the template's extra fields
    ('stage2-ingredient{ingredient}'). The default series is "".
    """

    template: str
    series: str = ""

    def __post_init__(self):
        names = [m["name"] for m in _FIELD.finditer(self.template)]
        if names.count("step") != 1:
            raise ValueError(
                f"revision pattern {self.template!r} must contain {{step}} exactly once "
                "(e.g. 'ckpt_{step}', 'checkpoint-{step}', 'step{step}-tokens{tokens}B')"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"revision pattern {self.template!r} names a field twice")
        _ = self.token_unit  # a {tokens} without its unit is refused here, not at the first branch

    @cached_property
    def regex(self) -> re.Pattern:
        parts, end = [], 0
        for m in _FIELD.finditer(self.template):
            parts.append(re.escape(self.template[end : m.start()]))
            parts.append(f"(?P<{m['name']}>\\d+)")
            end = m.end()
        parts.append(re.escape(self.template[end:]))
        return re.compile("^" + "".join(parts) + "$")

    @cached_property
    def token_unit(self) -> int | None:
        """The multiplier of `{tokens}`: the unit letter that follows it in the template (B: 10^9)."""
        m = re.search(r"\{tokens\}([KMBT])", self.template)
        if "{tokens}" in self.template and m is None:
            raise ValueError(f"revision pattern {self.template!r}: put the unit after {{tokens}} (K, M, B or T)")
        return TOKEN_UNITS[m.group(1)] if m else None

    def parse(self, branch: str) -> Revision | None:
        m = self.regex.match(branch)
        if m is None:
            return None
        fields = m.groupdict()
        tokens = int(fields["tokens"]) * self.token_unit if "tokens" in fields else None
        return Revision(branch, int(fields["step"]), self.series.format(**fields), tokens)

    def format(self, step: int, **fields) -> str:
        """The branch name for `step` (only for templates whose other fields are given)."""
        return self.template.format(step=step, **fields)


@dataclass(frozen=True)
class SuiteModel:
    """One repository of a suite: the short name users type, the Hub repository, what its card states."""

    name: str
    repo_id: str
    tokens_per_step: int | None = None  # tokens seen = step * this, where the card gives the batch size
    steps: tuple[int, ...] | None = None  # a fixed, published schedule; None: read the branch list
    note: str = ""


@dataclass(frozen=True)
class Suite:
    """A family of checkpoint repositories that name their branches the same way."""

    key: str
    title: str
    family: str  # the model_type its config.json declares
    models: tuple[SuiteModel, ...]
    patterns: tuple[RevisionPattern, ...]
    convention: str  # how the branches are named, as `pythia-dynamics models` shows it
    schedule: str  # what is known about when checkpoints were saved
    evidence: tuple[str, ...] = ()  # model-card URLs the naming was checked against
    revisions_file: str | None = None  # a file in the repository listing every branch, if published
    default_series: str = ""

    def revision_name(self, step: int, series: str | None = None) -> str:
        """A branch name from a fixed schedule (no branch list needed): the first pattern of the series."""
        series = self.default_series if series is None else series
        for pattern in self.patterns:
            if pattern.series == series and set(_fields(pattern.template)) == {"step"}:
                return pattern.format(step)
        raise ValueError(f"{self.title}: no branch-name template for series {series!r} that needs only the step")


def _fields(template: str) -> list[str]:
    return [m["name"] for m in _FIELD.finditer(template)]


def parse_branch(branch: str, patterns: Iterable[RevisionPattern]) -> Revision | None:
    """The first pattern that reads `branch`, parsed; None if none does (e.g. 'main')."""
    for pattern in patterns:
        if (revision := pattern.parse(branch)) is not None:
            return revision
    return None


def parse_revisions(
    branches: Iterable[str], patterns: Iterable[RevisionPattern], series: str = "", tokens_per_step: int | None = None
) -> list[Revision]:
    """The branches of one series, parsed and in training order; branches of no pattern are left out.

    Two branches of the same series at the same step (a re-upload under a second name) are an error
    naming both, since a step must identify one checkpoint. Tokens come from the name, else from
    `tokens_per_step`, else stay None.
    """
    patterns = tuple(patterns)
    by_step: dict[int, Revision] = {}
    for branch in branches:
        revision = parse_branch(branch, patterns)
        if revision is None or revision.series != series:
            continue
        if revision.tokens is None and tokens_per_step is not None:
            revision = Revision(revision.name, revision.step, revision.series, revision.step * tokens_per_step)
        if (other := by_step.get(revision.step)) is not None and other.name != revision.name:
            raise ValueError(
                f"branches {other.name!r} and {revision.name!r} both hold step {revision.step} of series "
                f"{series or 'default'!r}: cannot tell which checkpoint step {revision.step} means"
            )
        by_step[revision.step] = revision
    return [by_step[s] for s in sorted(by_step)]


def series_of(branches: Iterable[str], patterns: Iterable[RevisionPattern]) -> list[str]:
    """Every series the branches hold, sorted (the default series "" first)."""
    patterns = tuple(patterns)
    found = {r.series for b in branches if (r := parse_branch(b, patterns)) is not None}
    return sorted(found)


# Conventions `hub:ORG/NAME` and local folders are tried against, in this order, when none is given.
KNOWN_PATTERNS: tuple[RevisionPattern, ...] = (
    RevisionPattern("step{step}"),
    RevisionPattern("step{step}-tokens{tokens}B"),
    RevisionPattern("checkpoint-{step}"),
    RevisionPattern("step-{step}"),
    RevisionPattern("ckpt_{step}"),
    RevisionPattern("{step}"),
)

# --- The suites --------------------------------------------------------------------------------------

# Stanford CRFM's Mistral GPT-2 runs: the same 609 checkpoints for every run (TransformerLens's
# STANFORD_CRFM_CHECKPOINTS, which its loader uses as `checkpoint-{N}` revisions).
STANFORD_CRFM_STEPS: tuple[int, ...] = tuple(
    [*range(0, 100, 10), *range(100, 2000, 50), *range(2000, 20000, 100), *range(20000, 400000 + 1, 1000)]
)
_CRFM_RUNS = {
    "small": [("alias", 21), ("battlestar", 49), ("caprica", 81), ("darkmatter", 343), ("expanse", 777)],
    "medium": [("arwen", 21), ("beren", 49), ("celebrimbor", 81), ("durin", 343), ("eowyn", 777)],
}
# LLM360 Amber: 360 checkpoints, ckpt_000 ... ckpt_359 (the card: "360 model checkpoints").
AMBER_STEPS: tuple[int, ...] = tuple(range(360))

OLMO_1 = Suite(
    key="olmo",
    title="OLMo (the first generation, Hugging Face format)",
    family="olmo",
    models=(
        SuiteModel("olmo-1b", "allenai/OLMo-1B-hf"),
        SuiteModel("olmo-7b", "allenai/OLMo-7B-hf"),
        SuiteModel("olmo-7b-twin-2t", "allenai/OLMo-7B-Twin-2T-hf"),
        SuiteModel("olmo-7b-0424", "allenai/OLMo-7B-0424-hf"),
        SuiteModel("olmo-1b-0724", "allenai/OLMo-1B-0724-hf"),
        SuiteModel("olmo-7b-0724", "allenai/OLMo-7B-0724-hf"),
    ),
    patterns=(RevisionPattern("step{step}-tokens{tokens}B"),),
    convention="step{N}-tokens{M}B",
    schedule="a checkpoint every 1000 steps; 'a few revisions were lost' (model card); tokens in the name "
             "are rounded to billions",
    evidence=("https://huggingface.co/allenai/OLMo-1B", "https://huggingface.co/allenai/OLMo-1B-0724-hf"),
    revisions_file="revisions.txt",
)  # fmt: skip

OLMO_2 = Suite(
    key="olmo2",
    title="OLMo 2",
    family="olmo2",
    models=(
        SuiteModel("olmo-2-1b", "allenai/OLMo-2-0425-1B"),
        SuiteModel("olmo-2-7b", "allenai/OLMo-2-1124-7B"),
        SuiteModel("olmo-2-13b", "allenai/OLMo-2-1124-13B"),
        SuiteModel("olmo-2-32b", "allenai/OLMo-2-0325-32B"),
    ),
    patterns=(
        RevisionPattern("stage1-step{step}-tokens{tokens}B", series="stage1"),
        # Some early stage-1 branches carry no prefix (OLMo-2-1124-7B discussion #6: step150-tokens1B ...).
        RevisionPattern("step{step}-tokens{tokens}B", series="stage1"),
        # Stage 2 (mid-training) restarts its step and token counts; each ingredient is its own run.
        RevisionPattern("stage2-ingredient{ingredient}-step{step}-tokens{tokens}B", series="stage2-ingredient{ingredient}"),
    ),
    convention="stage1-step{N}-tokens{M}B (some stage-1 branches without 'stage1-'); "
               "stage2-ingredient{K}-step{N}-tokens{M}B",
    schedule="stage 1 (pre-training) mostly every 1000 steps; stage 2 (mid-training) per ingredient, its "
             "steps and tokens counted from the start of stage 2",
    evidence=("https://huggingface.co/allenai/OLMo-2-1124-7B/discussions/6",
              "https://huggingface.co/allenai/OLMo-2-1124-7B/tree/stage2-ingredient1-step11931-tokens50B"),
    default_series="stage1",
)  # fmt: skip

STANFORD_CRFM = Suite(
    key="stanford-crfm",
    title="Stanford CRFM Mistral GPT-2 (five seeds per size)",
    family="gpt2",
    models=tuple(
        SuiteModel(f"{run}-gpt2-{size}-x{seed}", f"stanford-crfm/{run}-gpt2-{size}-x{seed}", steps=STANFORD_CRFM_STEPS,
                   note=f"seed {seed}")
        for size, runs in _CRFM_RUNS.items()
        for run, seed in runs
    ),
    patterns=(RevisionPattern("checkpoint-{step}"),),
    convention="checkpoint-{N}",
    schedule="609 checkpoints: every 10 steps to 100, 50 to 2000, 100 to 20000, then 1000 to 400000 "
             "(TransformerLens's STANFORD_CRFM_CHECKPOINTS)",
    evidence=("https://huggingface.co/stanford-crfm/alias-gpt2-small-x21",),
)  # fmt: skip

SMOLLM2 = Suite(
    key="smollm2",
    title="SmolLM2 intermediate checkpoints",
    family="llama",
    models=(
        SuiteModel("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints", tokens_per_step=1_048_576),
        SuiteModel("smollm2-360m", "HuggingFaceTB/SmolLM2-360M-intermediate-checkpoints",
                   note="the card found gives no batch size: tokens seen unknown"),
        SuiteModel("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B-intermediate-checkpoints", tokens_per_step=2_097_152),
    ),
    patterns=(RevisionPattern("step-{step}"),),
    convention="step-{N}",
    schedule="every 240000 (135M), 160000 (360M) or 125000 (1.7B) steps, about 250B tokens apart; "
             "tokens seen = step x global batch size (model card)",
    evidence=("https://huggingface.co/HuggingFaceTB/SmolLM2-135M-intermediate-checkpoints",
              "https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B-intermediate-checkpoints"),
)  # fmt: skip

SMOLLM3 = Suite(
    key="smollm3",
    title="SmolLM3 intermediate checkpoints (pre-training stages 1-3)",
    family="smollm3",
    models=(SuiteModel("smollm3-3b", "HuggingFaceTB/SmolLM3-3B-checkpoints", tokens_per_step=2_359_296),),
    # The three stages count steps on from one another (stage 2: steps 3,450,000 to 4,200,000), so
    # together they are one series.
    patterns=(RevisionPattern("stage{stage}-step-{step}"),),
    convention="stage{S}-step-{N} (stages 1-3 share one step count)",
    schedule="every 40000 steps (94.4B tokens); tokens seen = step x 2,359,296 (model card); the long-context "
             "and post-training branches are not read",
    evidence=("https://huggingface.co/HuggingFaceTB/SmolLM3-3B-checkpoints",),
)  # fmt: skip

AMBER = Suite(
    key="amber",
    title="LLM360 Amber",
    family="llama",
    models=(SuiteModel("amber", "LLM360/Amber", steps=AMBER_STEPS,
                       note="steps are checkpoint indexes 0-359, not optimizer steps"),),
    patterns=(RevisionPattern("ckpt_{step:03d}"),),
    convention="ckpt_{NNN} (000 ... 359)",
    schedule="360 checkpoints, numbered in training order; the card gives no tokens per checkpoint",
    evidence=("https://huggingface.co/LLM360/Amber", "https://huggingface.co/LLM360/Amber/discussions/3"),
)  # fmt: skip

# Pythia's models and schedules live in catalog.py; this entry is its revision convention.
PYTHIA = Suite(
    key="pythia",
    title="Pythia, -deduped, -v0 and PolyPythias",
    family="gpt_neox",
    models=(),
    patterns=(RevisionPattern("step{step}"),),
    convention="step{N}",
    schedule="fixed: 154 checkpoints (step0, 1, 2, 4 ... 512, then every 1000 to 143000); -v0: every 1000",
    evidence=("https://huggingface.co/EleutherAI/pythia-70m",),
)

SUITES: tuple[Suite, ...] = (PYTHIA, OLMO_1, OLMO_2, STANFORD_CRFM, SMOLLM2, SMOLLM3, AMBER)
# Pythia's batch: 1024 sequences of 2048 tokens (Biderman et al. 2023, section 2), for every current model.
PYTHIA_TOKENS_PER_STEP = 2_097_152


@dataclass(frozen=True)
class FoundModel:
    suite: Suite
    model: SuiteModel
    series: str = ""  # the series named after ':' ('' when none was)


def _by_name() -> dict[str, tuple[Suite, SuiteModel]]:
    table = {}
    for suite in SUITES:
        for model in suite.models:
            table[model.name] = (suite, model)
            table[model.repo_id.lower()] = (suite, model)
    return table


def all_suite_names() -> list[str]:
    """The short names of every non-Pythia suite model (Pythia's are `catalog.all_pythia_names()`)."""
    return [model.name for suite in SUITES for model in suite.models]


def find_suite_model(name: str) -> FoundModel | None:
    """'olmo-1b', 'allenai/OLMo-1B-hf', 'olmo-2-1b:stage2-ingredient2' (a series after ':'); else None."""
    base, _, series = name.strip().partition(":")
    found = _by_name().get(base.lower())
    if found is None:
        return None
    suite, model = found
    return FoundModel(suite, model, series)


def close_suite_names(name: str, n: int = 3) -> list[str]:
    return difflib.get_close_matches(name.strip().lower().partition(":")[0], all_suite_names(), n=n)
