"""Checkpoint suites on the Hugging Face Hub, one branch per checkpoint, read through the Hub's disk cache.

A model is named three ways: a Pythia name (`pythia-70m`: branches `step<N>`, the published schedule), a
suite model from `pythia_dynamics.suites` (`olmo-1b`: branches `step<N>-tokens<M>B`), or any repository
`hub:ORG/NAME` with a revision pattern (`ckpt_{step}`; without one the known conventions are tried).
Where the schedule is fixed and published (Pythia, Stanford CRFM, Amber) it is used as is; otherwise the
branch list comes from the Hub's refs when the Hub answers, else from the cache (its `refs/` folder, and
the suite's published branch list file such as OLMo's revisions.txt where cached).

Everything goes through `huggingface_hub`, so `HF_HUB_OFFLINE=1` with a populated cache works with no
network, and the same code resolves revisions against the real Hub when online. A file already in the
cache is read from it with no network call; anything else is downloaded only after one quick probe
found the Hub answering, so an unreachable Hub fails at once instead of after huggingface_hub's minute
of retries per file. `huggingface_hub` and transformers are imported where they are used: listing a
fixed schedule's steps imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pythia_dynamics.catalog import PythiaModel, UnknownModelError, resolve_pythia
from pythia_dynamics.sources.base import (
    WEIGHT_FILES,
    CheckpointSource,
    CheckpointUnavailableError,
    StateDict,
    load_weight_files,
    read_shard_map,
    shard_names,
)
from pythia_dynamics.suites import (
    KNOWN_PATTERNS,
    PYTHIA,
    PYTHIA_TOKENS_PER_STEP,
    Revision,
    RevisionPattern,
    Suite,
    close_suite_names,
    find_suite_model,
    parse_revisions,
    series_of,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["CachePolicy", "CheckpointsNotCachedError", "HUB_PREFIX", "HubSource", "NoCheckpointBranchesError"]

log = logging.getLogger(__name__)

CachePolicy = Literal["keep", "delete-after-use"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# One request, no retries: long enough for a slow link to answer, short against a minute of retries.
PROBE_TIMEOUT_S = 10.0
HUB_PREFIX = "hub:"
LOCAL_SUITE_HINT = (
    "or sweep a local suite folder instead (`pythia-dynamics sweep ./my-suite --out store`: one sub-folder "
    "per checkpoint, named step<N>, checkpoint-<N>, step<N>-tokens<M>B or ckpt_<N>, each the "
    "save_pretrained output of a supported causal LM)"
)


class CheckpointsNotCachedError(CheckpointUnavailableError):
    """Checkpoints that are not in the Hub cache while the Hub cannot be reached (or HF_HUB_OFFLINE is set)."""

    def __init__(self, message: str, missing: Sequence[int] = ()):
        super().__init__(message)
        self.missing = list(missing)  # the steps whose revisions are not cached


class NoCheckpointBranchesError(CheckpointUnavailableError):
    """A repository (or its cached part) with no branch that names a checkpoint the way the suite does."""


@dataclass(frozen=True)
class HubModel:
    """What naming a model resolved to: its repository, revision naming and what is known in advance."""

    repo_id: str
    suite: Suite | None  # None: a `hub:ORG/NAME` repository
    patterns: tuple[RevisionPattern, ...]
    series: str = ""
    fixed: tuple[int, ...] | None = None  # a published, fixed schedule
    tokens_per_step: int | None = None
    pythia: PythiaModel | None = None
    revision_pattern: str | None = None  # as the user gave it


def resolve_hub_model(model: str, revision_pattern: str | None = None, series: str | None = None) -> HubModel:
    """A Pythia name, a suite model ('olmo-1b', 'olmo-2-1b:stage2-ingredient1') or 'hub:ORG/NAME'."""
    text = model.strip()
    custom = (RevisionPattern(revision_pattern),) if revision_pattern else None
    if text.lower().startswith(HUB_PREFIX):
        repo_id, _, named_series = text[len(HUB_PREFIX) :].partition(":")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"{model!r}: write a Hub repository as hub:ORG/NAME (e.g. hub:LLM360/Amber)")
        return HubModel(repo_id, None, custom or KNOWN_PATTERNS, series or named_series, revision_pattern=revision_pattern)
    found = find_suite_model(text)
    if found is not None:
        # A pattern of the user's own labels no series unless it says so: its default is "".
        chosen = series or found.series or ("" if custom else found.suite.default_series)
        return HubModel(
            found.model.repo_id, found.suite, custom or found.suite.patterns, chosen,
            fixed=None if custom or chosen != found.suite.default_series else found.model.steps,
            tokens_per_step=found.model.tokens_per_step, revision_pattern=revision_pattern,
        )  # fmt: skip
    try:
        pythia = resolve_pythia(text)
    except UnknownModelError as error:
        close = [*error.close, *close_suite_names(text)][:3]
        unknown = UnknownModelError(
            f"{model!r} is not a known model (Pythia, OLMo, OLMo 2, Stanford CRFM GPT-2, SmolLM2/3, Amber)."
            + (f" Did you mean {', '.join(close)}?" if close else "")
            + " `pythia-dynamics models` lists the known models; any other Hub repository is hub:ORG/NAME "
            "(with --revision-pattern if its branches are not named step<N>, checkpoint-<N> ...)."
        )
        unknown.close = tuple(close)
        raise unknown from None
    return HubModel(
        pythia.repo_id, PYTHIA, custom or PYTHIA.patterns, series or "",
        fixed=None if custom or series else tuple(pythia.steps),
        tokens_per_step=None if pythia.v0 else PYTHIA_TOKENS_PER_STEP, pythia=pythia, revision_pattern=revision_pattern,
    )  # fmt: skip


class HubSource(CheckpointSource):
    """One model's checkpoints on the Hub: a Pythia model, a suite model, or `hub:ORG/NAME`.

    `revision_pattern` ('ckpt_{step}', see `pythia_dynamics.suites`) overrides how branch names are read;
    `series` picks one series where a suite has several sharing step numbers (OLMo 2's stage-2
    ingredients: 'stage2-ingredient1'; the default is the main pre-training series). The results of a
    non-default series are recorded under '<repo>:<series>', so they never mix with the main run's.

    cache_policy "keep" leaves downloaded revisions in the Hub cache; "delete-after-use" removes a
    revision's files from the cache once its weights are in memory (files other revisions still
    reference stay), so a sweep over 154 checkpoints of a large model needs disk for about one.
    """

    def __init__(
        self,
        model: str,
        *,
        revision_pattern: str | None = None,
        series: str | None = None,
        cache_dir: str | Path | None = None,
        cache_policy: CachePolicy = "keep",
        token: str | None = None,
    ):
        if cache_policy not in get_args(CachePolicy):
            raise ValueError(f"cache_policy must be one of {get_args(CachePolicy)}, got {cache_policy!r}")
        self.model = resolve_hub_model(model, revision_pattern, series)
        self.pythia = self.model.pythia
        self.suite = self.model.suite
        self.series = self.model.series
        self.repo_id = self.model.repo_id
        default = self.suite.default_series if self.suite else ""
        self.name = self.repo_id if self.series in ("", default) else f"{self.repo_id}:{self.series}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_policy = cache_policy
        self.token = token
        self._config: PretrainedConfig | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._hub_answered = False  # only success is remembered: a failed probe is retried on the next need
        self._revisions: dict[int, Revision] | None = None
        self.listed_from = "the published schedule" if self.model.fixed is not None else None

    def __repr__(self) -> str:
        listed = f"{len(self._revisions)} checkpoints" if self._revisions is not None else "branches not listed yet"
        return f"HubSource({self.name!r}, {listed})"

    # --- the schedule: which branches hold which steps -------------------------------------------------

    @property
    def steps(self) -> list[int]:
        return list(self.revisions())

    def revisions(self) -> dict[int, Revision]:
        """{step: Revision} of this model's series, in training order (listed once, then remembered)."""
        if self._revisions is None:
            self._revisions = {r.step: r for r in self._list_revisions()}
        return self._revisions

    def revision(self, step: int | None) -> str:
        """The branch that holds `step` ('step1000-tokens4B' for OLMo); 'main' for None."""
        if step is None:
            return "main"
        revision = self.revisions().get(step)
        if revision is None:
            self.select([step])  # not in the schedule: an error listing the valid steps
        return revision.name

    def tokens_seen(self) -> dict[int, int]:
        return {step: r.tokens for step, r in self.revisions().items() if r.tokens is not None}

    def _list_revisions(self) -> list[Revision]:
        model = self.model
        if model.fixed is not None:
            suite = model.suite
            return [
                Revision(suite.revision_name(step, model.series), step, model.series,
                         step * model.tokens_per_step if model.tokens_per_step else None)
                for step in model.fixed
            ]  # fmt: skip
        branches, self.listed_from = self._list_branches()
        patterns = model.patterns
        if model.suite is None and model.revision_pattern is None:
            patterns = _best_known_pattern(branches)
        revisions = parse_revisions(branches, patterns, model.series, model.tokens_per_step)
        if not revisions:
            raise self._no_checkpoints(branches, patterns)
        return revisions

    def _list_branches(self) -> tuple[list[str], str]:
        """The repository's branch names and where they came from: the Hub, else the cache."""
        why = self._why_hub_unusable()
        if why is None:
            from huggingface_hub import HfApi

            try:
                refs = HfApi(token=self.token).list_repo_refs(self.repo_id)
                return [branch.name for branch in refs.branches], "the Hub's branch list"
            except Exception as error:  # the probe answered but the listing did not: fall back, saying so
                why = f"listing its branches failed ({type(error).__name__}: {error})"
                log.warning("%s: %s; using the branches in the cache", self.repo_id, why)
        branches = self._cached_branches()
        if self.suite is not None and self.suite.revisions_file:
            branches += [b for b in self._cached_branch_file(branches) if b not in branches]
        return branches, f"the Hugging Face cache ({self._cache_name()}; {why})"

    def _repo_cache(self) -> Path:
        from huggingface_hub import constants

        return Path(self.cache_dir or constants.HF_HUB_CACHE) / f"models--{self.repo_id.replace('/', '--')}"

    def _cached_branches(self) -> list[str]:
        refs = self._repo_cache() / "refs"
        if not refs.is_dir():
            return []
        return sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())

    def _cached_branch_file(self, cached: list[str]) -> list[str]:
        """The suite's published branch list (OLMo's revisions.txt) from any cached revision."""
        from huggingface_hub import try_to_load_from_cache

        for revision in ("main", *cached):
            path = try_to_load_from_cache(self.repo_id, self.suite.revisions_file, cache_dir=self.cache_dir, revision=revision)
            if isinstance(path, str):
                return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        return []

    def _no_checkpoints(self, branches: list[str], patterns: tuple[RevisionPattern, ...]) -> NoCheckpointBranchesError:
        naming = " or ".join(p.template for p in patterns)
        shown = ", ".join(branches[:8]) + (" ..." if len(branches) > 8 else "") if branches else "none"
        other_series = [s for s in series_of(branches, patterns) if s != self.series]
        if other_series:
            held = ", ".join(repr(s) if s else "'' (the default)" for s in other_series)
            return NoCheckpointBranchesError(
                f"{self.repo_id} has no checkpoint branch in series {self.series or 'default'!r} (from "
                f"{self.listed_from}); its branches hold series {held}: "
                "pick one with --series (Python: series=...)."
            )
        if branches and set(branches) <= {"main"}:
            return NoCheckpointBranchesError(
                f"{self.repo_id} has only the branch 'main' (from {self.listed_from}): one model, not a checkpoint "
                "suite. Checkpoints live in branches named like step<N> or checkpoint-<N>; if this repository keeps "
                f"them under another name, pass --revision-pattern (Python: revision_pattern=...), e.g. 'ckpt_{{step}}'."
            )
        if not branches:
            return NoCheckpointBranchesError(
                f"no branch of {self.repo_id} is known (branches, from {self.listed_from}: none), so there is no "
                f"schedule to read; its checkpoints are named like {naming}. {self._how_to_get(None)}"
            )
        return NoCheckpointBranchesError(
            f"no branch of {self.repo_id} is named like {naming} (branches, from {self.listed_from}: {shown}). "
            f"Pass the naming with --revision-pattern (Python: revision_pattern=...), e.g. 'ckpt_{{step}}' or "
            f"'step{{step}}-tokens{{tokens}}B'."
        )

    def preflight(self, steps: Sequence[int]) -> None:
        """Refuse selected checkpoints that are not cached when the Hub cannot be reached (or
        HF_HUB_OFFLINE is set), naming them and how to get them; a cache lookup and at most one request."""
        super().preflight(steps)
        missing = [step for step in steps if not self.is_cached(step)]
        if not missing:
            return
        why = self._why_hub_unusable()
        if why is None:
            return  # they will be downloaded
        cached = [step for step in self.steps if step not in missing and self.is_cached(step)]
        listed = ", ".join(f"{self.repo_id}@{self.revision(s)}" for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        how = self._how_to_get(missing[0], select_cached=bool(cached))
        raise CheckpointsNotCachedError(
            f"{len(missing)} of the {len(steps)} selected checkpoint(s) are not in the Hugging Face cache "
            f"({self._cache_name()}): {listed}; and {why}, so they cannot be downloaded. "
            f"Cached revisions of {self.repo_id}: {_describe_steps(cached, self.revision)}. {how}",
            missing,
        )

    def is_cached(self, step: int) -> bool:
        """Whether the cache holds `step`'s config and weights (every shard, if sharded); no network."""
        return self._cached("config.json", step) is not None and self._cached_weights(step) is not None

    def config_dir(self, step: int) -> Path:
        return self._fetch_first(("config.json",), step).parent

    def hf_config(self) -> PretrainedConfig:
        from transformers import AutoConfig

        # The architecture is the same at every step: any revision that can be read will do.
        if self._config is None:
            path = self._cached_anywhere("config.json") or self._fetch_first(("config.json",), None)
            self._config = AutoConfig.from_pretrained(path.parent)
        return self._config

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        from transformers import AutoTokenizer

        if self._tokenizer is None:
            folder = self._tokenizer_folder()
            if folder is not None:
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
        return self._tokenizer

    def _tokenizer_folder(self) -> Path | None:
        # The tokenizer is the same at every step: a cached one, else the final revision's, else main's.
        cached = self._cached_anywhere("tokenizer.json")
        if cached is not None:
            return cached.parent
        for step in (self.steps[-1], None):
            try:
                folder = self._fetch_first(("tokenizer.json",), step).parent
            except CheckpointUnavailableError as error:
                log.debug("no tokenizer at %s: %s", self.revision(step), error)
                continue
            for extra in TOKENIZER_FILES[1:]:
                try:
                    self._fetch_first((extra,), step)
                except CheckpointUnavailableError:
                    pass
            return folder
        log.warning("no tokenizer for %s in the cache or on the Hub; string inputs will not work", self.name)
        return None

    def read_state_dict(self, step: int) -> StateDict:
        self.select([step])  # a step outside the schedule is an error listing the valid steps
        path = self._cached_weights(step) or self._fetch_first(WEIGHT_FILES, step)
        return load_weight_files(path, fetch_shard=lambda shard: self._fetch_first((shard,), step))

    def shard_map(self, step: int) -> dict[str, str] | None:
        path = self._cached_weights(step)  # the cache only: an index not cached is not worth a download here
        return read_shard_map(path) if path is not None and path.name.endswith(".index.json") else None

    def metadata(self) -> dict:
        """Where the checkpoints come from and what is known: suite, family, revision naming, tokens seen."""
        meta = {
            "source": "huggingface-hub",
            "repo_id": self.repo_id,
            "suite": self.suite.key if self.suite else "hub",
            "family": self.suite.family if self.suite else None,
            "series": self.series,
            "revision_convention": " | ".join(p.template for p in self.model.patterns),
            "revisions_listed_from": self.listed_from,
            # JSON-ready, as the store records it (lr_schedule's lr_at_checkpoint is keyed the same way)
            "tokens_seen": {str(step): tokens for step, tokens in self.tokens_seen().items()},
        }
        if self.pythia is not None:
            meta["lr_schedule"] = self.pythia.lr_schedule()
        return meta

    def release(self, step: int) -> None:
        if self.cache_policy == "delete-after-use":
            delete_cached_revision(self.repo_id, self.revision(step), self.cache_dir)

    def _cached(self, filename: str, step: int | None) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo_id, filename, cache_dir=self.cache_dir, revision=self.revision(step))
        return Path(found) if isinstance(found, str) else None  # else not cached, or cached as absent

    def _cached_weights(self, step: int) -> Path | None:
        for name in WEIGHT_FILES:
            path = self._cached(name, step)
            if path is not None and (not name.endswith(".index.json") or self._shards_cached(path, step)):
                return path
        return None

    def _shards_cached(self, index: Path, step: int) -> bool:
        try:
            return all(self._cached(shard, step) for shard in shard_names(index))
        except CheckpointUnavailableError:  # an unreadable index: not a usable cached checkpoint
            return False

    def _cached_anywhere(self, filename: str) -> Path | None:
        """`filename` from any cached revision: main, the final step, then the others, latest first."""
        for step in (None, *reversed(self.steps)):
            path = self._cached(filename, step)
            if path is not None:
                return path
        return None

    def _fetch_first(self, filenames: tuple[str, ...], step: int | None) -> Path:
        """The first of `filenames` in the cache, else downloaded: only once the Hub has answered a probe."""
        if step is not None:
            self.select([step])  # a step outside the schedule is an error listing the valid steps
        for filename in filenames:
            path = self._cached(filename, step)
            if path is not None:
                return path
        where = f"{self.repo_id} revision {self.revision(step)}"
        why = self._why_hub_unusable()
        if why is not None:
            raise CheckpointsNotCachedError(
                f"{where}: none of {', '.join(filenames)} is in the Hugging Face cache ({self._cache_name()}), "
                f"and {why}, so it cannot be downloaded. "
                f"{self._how_to_get(step)}",
                [step] if step is not None else [],
            )
        errors = []
        for filename in filenames:
            try:
                return self._download(filename, step)
            except _missing_on_hub() as error:
                errors.append(f"{filename}: {type(error).__name__}")
        raise CheckpointUnavailableError(
            f"{where}: none of {', '.join(filenames)} exists on the Hub "
            f"({'; '.join(errors)})."
        )

    def _download(self, filename: str, step: int | None) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            return Path(
                hf_hub_download(
                    self.repo_id, filename, revision=self.revision(step), cache_dir=self.cache_dir, token=self.token
                )
            )
        except RepositoryNotFoundError as error:
            raise CheckpointUnavailableError(f"{self.repo_id} not found on the Hub or in the cache: {error}") from error

    def _why_hub_unusable(self) -> str | None:
        """None if downloads can go ahead, else why not: HF_HUB_OFFLINE, or one probe that got no answer."""
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import RepositoryNotFoundError

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set (offline mode: only cached revisions can be read)"
        if self._hub_answered:
            return None
        try:
            HfApi(token=self.token).model_info(self.repo_id, timeout=PROBE_TIMEOUT_S)
        except RepositoryNotFoundError as error:
            raise CheckpointUnavailableError(f"{self.repo_id} not found on the Hub: {error}") from error
        except Exception as error:  # no network, DNS, proxy, a timeout, a server error: all mean "not now"
            return f"the Hub ({constants.ENDPOINT}) cannot be reached ({type(error).__name__}: {error})"
        self._hub_answered = True
        return None

    def _cache_name(self) -> str:
        from huggingface_hub import constants

        return str(self.cache_dir or constants.HF_HUB_CACHE)

    def _how_to_get(self, step: int | None, select_cached: bool = False) -> str:
        cache_option = f" --cache-dir {self.cache_dir}" if self.cache_dir else ""
        branch = self.revision(step) if step is not None else "<branch>"
        return (
            f"To go on: {'select cached steps only (--steps); or ' if select_cached else ''}"
            "fill the cache while online, one revision a command: "
            f"`hf download {self.repo_id} --revision {branch}{cache_option}` (`huggingface-cli download` "
            "with older huggingface_hub); or copy checkpoint folders you have into a cache with "
            f"`pythia_dynamics.sources.write_hub_cache`; {LOCAL_SUITE_HINT}."
        )


def _missing_on_hub() -> tuple[type[Exception], ...]:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    return (EntryNotFoundError, RevisionNotFoundError)


def _best_known_pattern(branches: list[str]) -> tuple[RevisionPattern, ...]:
    """For a repository named without a pattern: the known convention that reads the most branches
    (the first in KNOWN_PATTERNS' order on a tie); all of them when none reads any (for the error)."""
    counts = [(sum(p.parse(b) is not None for b in branches), -i, p) for i, p in enumerate(KNOWN_PATTERNS)]
    best = max(counts, key=lambda c: c[:2])
    return (best[2],) if best[0] else KNOWN_PATTERNS


def _describe_steps(steps: list[int], revision) -> str:
    if not steps:
        return "none"
    shown = ", ".join(revision(s) for s in steps[:8])
    return f"{len(steps)} revision(s) ({shown}{' ...' if len(steps) > 8 else ''})"


def delete_cached_revision(repo_id: str, revision: str, cache_dir: Path | None) -> int:
    """Remove one revision from the Hub cache; returns the bytes freed (0 if it was not cached)."""
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir(cache_dir)
    commits = [
        rev.commit_hash
        for repo in cache.repos
        if repo.repo_id == repo_id
        for rev in repo.revisions
        if revision in rev.refs
    ]
    if not commits:
        return 0
    strategy = cache.delete_revisions(*commits)
    strategy.execute()
    log.info("freed %s from the Hub cache (%s@%s)", strategy.expected_freed_size_str, repo_id, revision)
    return strategy.expected_freed_size
