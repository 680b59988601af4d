"""Pythia checkpoints on the Hugging Face Hub: revisions `step<N>`, read through the Hub's disk cache.

Everything goes through `huggingface_hub`, so `HF_HUB_OFFLINE=1` with a populated cache works with no
network, and the same code resolves revisions against the real Hub when online. A file already in the
cache is read from it with no network call; anything else is downloaded only after one quick probe
found the Hub answering, so an unreachable Hub fails at once instead of after huggingface_hub's minute
of retries per file. `huggingface_hub` and transformers are imported where they are used: listing a
model's steps imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pythia_dynamics.catalog import resolve_pythia
from pythia_dynamics.sources.base import (
    WEIGHT_FILES,
    CheckpointSource,
    CheckpointUnavailableError,
    StateDict,
    load_weight_files,
    read_shard_map,
    shard_names,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["CachePolicy", "CheckpointsNotCachedError", "HubSource"]

log = logging.getLogger(__name__)

CachePolicy = Literal["keep", "delete-after-use"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# One request, no retries: long enough for a slow link to answer, short against a minute of retries.
PROBE_TIMEOUT_S = 10.0


class CheckpointsNotCachedError(CheckpointUnavailableError):
    """Checkpoints that are not in the Hub cache while the Hub cannot be reached (or HF_HUB_OFFLINE is set)."""

    def __init__(self, message: str, missing: Sequence[int] = ()):
        super().__init__(message)
        self.missing = list(missing)  # the steps whose revisions are not cached


class HubSource(CheckpointSource):
    """One Pythia model's checkpoints on the Hub.

    cache_policy "keep" leaves downloaded revisions in the Hub cache; "delete-after-use" removes a
    revision's files from the cache once its weights are in memory (files other revisions still
    reference stay), so a sweep over 154 checkpoints of a large model needs disk for about one.
    """

    def __init__(
        self,
        model: str,
        *,
        cache_dir: str | Path | None = None,
        cache_policy: CachePolicy = "keep",
        token: str | None = None,
    ):
        if cache_policy not in get_args(CachePolicy):
            raise ValueError(f"cache_policy must be one of {get_args(CachePolicy)}, got {cache_policy!r}")
        self.pythia = resolve_pythia(model)
        self.name = self.pythia.repo_id
        self.steps = self.pythia.steps
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_policy = cache_policy
        self.token = token
        self._config: PretrainedConfig | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._hub_answered = False  # only success is remembered: a failed probe is retried on the next need

    @staticmethod
    def revision(step: int | None) -> str:
        return f"step{step}" if step is not None else "main"

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
        listed = ", ".join(f"{self.name}@{self.revision(s)}" for s in missing[:5]) + (" ..." if len(missing) > 5 else "")
        how = self._how_to_get(missing[0], select_cached=bool(cached))
        raise CheckpointsNotCachedError(
            f"{len(missing)} of the {len(steps)} selected checkpoint(s) are not in the Hugging Face cache "
            f"({self._cache_name()}): {listed}; and {why}, so they cannot be downloaded. "
            f"Cached revisions of {self.name}: {_describe_steps(cached)}. {how}",
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
        return {"lr_schedule": self.pythia.lr_schedule(), "source": "huggingface-hub", "repo_id": self.name}

    def release(self, step: int) -> None:
        if self.cache_policy == "delete-after-use":
            delete_cached_revision(self.name, self.revision(step), self.cache_dir)

    def _cached(self, filename: str, step: int | None) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.name, filename, cache_dir=self.cache_dir, revision=self.revision(step))
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
        where = f"{self.name} revision {self.revision(step)}"
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
                    self.name, filename, revision=self.revision(step), cache_dir=self.cache_dir, token=self.token
                )
            )
        except RepositoryNotFoundError as error:
            raise CheckpointUnavailableError(f"{self.name} not found on the Hub or in the cache: {error}") from error

    def _why_hub_unusable(self) -> str | None:
        """None if downloads can go ahead, else why not: HF_HUB_OFFLINE, or one probe that got no answer."""
        from huggingface_hub import HfApi, constants
        from huggingface_hub.errors import RepositoryNotFoundError

        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set (offline mode: only cached revisions can be read)"
        if self._hub_answered:
            return None
        try:
            HfApi(token=self.token).model_info(self.name, timeout=PROBE_TIMEOUT_S)
        except RepositoryNotFoundError as error:
            raise CheckpointUnavailableError(f"{self.name} not found on the Hub: {error}") from error
        except Exception as error:  # no network, DNS, proxy, a timeout, a server error: all mean "not now"
            return f"the Hub ({constants.ENDPOINT}) cannot be reached ({type(error).__name__}: {error})"
        self._hub_answered = True
        return None

    def _cache_name(self) -> str:
        from huggingface_hub import constants

        return str(self.cache_dir or constants.HF_HUB_CACHE)

    def _how_to_get(self, step: int | None, select_cached: bool = False) -> str:
        cache_option = f" --cache-dir {self.cache_dir}" if self.cache_dir else ""
        return (
            f"To go on: {'select cached steps only (--steps); or ' if select_cached else ''}"
            "fill the cache while online, one revision a command: "
            f"`hf download {self.name} --revision {self.revision(step)}{cache_option}` (`huggingface-cli download` "
            "with older huggingface_hub); or copy checkpoint folders you have into a cache with "
            "`pythia_dynamics.sources.write_hub_cache`; or sweep a local suite folder instead "
            "(`pythia-dynamics sweep ./my-suite --out store`: step<N>/ sub-folders, each a GPTNeoXForCausalLM "
            "save_pretrained output)."
        )


def _missing_on_hub() -> tuple[type[Exception], ...]:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    return (EntryNotFoundError, RevisionNotFoundError)


def _describe_steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    shown = ", ".join(f"step{s}" for s in steps[:8])
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
