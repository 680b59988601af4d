"""Pythia checkpoints on the Hugging Face Hub: revisions `step<N>`, read through the Hub's disk cache.

Everything goes through `huggingface_hub`, so `HF_HUB_OFFLINE=1` with a populated cache works with no
network, and the same code resolves revisions against the real Hub when online.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

from huggingface_hub import hf_hub_download, scan_cache_dir
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import AutoTokenizer, GPTNeoXConfig, PreTrainedTokenizerBase

from pythia_dynamics.catalog import resolve_pythia
from pythia_dynamics.sources.base import (
    WEIGHT_FILES,
    CheckpointSource,
    CheckpointUnavailableError,
    StateDict,
    load_weight_files,
)

__all__ = ["CachePolicy", "HubSource"]

log = logging.getLogger(__name__)

CachePolicy = Literal["keep", "delete-after-use"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_MISSING = (EntryNotFoundError, RevisionNotFoundError)


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
        self._config: GPTNeoXConfig | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    @staticmethod
    def revision(step: int) -> str:
        return f"step{step}"

    def _download(self, filename: str, step: int | None) -> Path:
        revision = self.revision(step) if step is not None else "main"
        if step is not None and step not in self.steps:
            self.select([step])  # raises with the list of valid steps
        try:
            return Path(
                hf_hub_download(
                    self.name, filename, revision=revision, cache_dir=self.cache_dir, token=self.token
                )
            )
        except RepositoryNotFoundError as error:
            raise CheckpointUnavailableError(f"{self.name} not found on the Hub or in the cache: {error}") from error

    def _first_available(self, filenames: tuple[str, ...], step: int | None) -> Path:
        errors = []
        for filename in filenames:
            try:
                return self._download(filename, step)
            except _MISSING as error:
                errors.append(f"{filename}: {type(error).__name__}")
        where = f"revision step{step}" if step is not None else "revision main"
        raise CheckpointUnavailableError(
            f"{self.name} {where}: none of {', '.join(filenames)} could be found "
            f"({'; '.join(errors)}). Offline (HF_HUB_OFFLINE=1) only cached revisions can be read; "
            f"cache: {self.cache_dir or 'the default Hugging Face cache'}."
        )

    def config_dir(self, step: int) -> Path:
        return self._first_available(("config.json",), step).parent

    def hf_config(self) -> GPTNeoXConfig:
        # The architecture is the same at every step: any revision that can be read will do.
        if self._config is None:
            self._config = GPTNeoXConfig.from_pretrained(self._first_available(("config.json",), None).parent)
        return self._config

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        # The tokenizer is the same at every step; the final revision is the one most likely cached.
        if self._tokenizer is None:
            for step in (self.steps[-1], None):
                try:
                    folder = self._first_available(("tokenizer.json",), step).parent
                    for extra in TOKENIZER_FILES[1:]:
                        try:
                            self._download(extra, step)
                        except _MISSING:
                            pass
                    self._tokenizer = AutoTokenizer.from_pretrained(folder)
                    break
                except CheckpointUnavailableError as error:
                    log.debug("no tokenizer at %s: %s", step, error)
            else:
                log.warning("no tokenizer for %s in the cache; string inputs will not work", self.name)
        return self._tokenizer

    def read_state_dict(self, step: int) -> StateDict:
        path = self._first_available(WEIGHT_FILES, step)
        return load_weight_files(path, fetch_shard=lambda shard: self._download(shard, step))

    def metadata(self) -> dict:
        return {"lr_schedule": self.pythia.lr_schedule(), "source": "huggingface-hub", "repo_id": self.name}

    def release(self, step: int) -> None:
        if self.cache_policy == "delete-after-use":
            delete_cached_revision(self.name, self.revision(step), self.cache_dir)


def delete_cached_revision(repo_id: str, revision: str, cache_dir: Path | None) -> int:
    """Remove one revision from the Hub cache; returns the bytes freed (0 if it was not cached)."""
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
