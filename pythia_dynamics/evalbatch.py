"""The fixed evaluation batch every checkpoint of a sweep sees, and a record of where it came from.

Default per source:
- a local suite: random windows of its held-out text (`heldout.txt`), seeded;
- a Hub model: random windows of a Pile sample (the `NeelNanda/pile-10k` dataset on the Hub), as the
  source study used a random Pile batch, read from the Hugging Face cache when it is there. When it
  is not and cannot be fetched (HF_HUB_OFFLINE, no network: one request, no retries, tells), the sweep
  says so at the start and falls back to held-out Python standard-library source text, selected
  with the same seed by the mini suite's corpus code.
A user may pass a text file or token ids instead. The tokens themselves are stored with the results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from pythia_dynamics.sources import CheckpointSource, LocalSuite
from pythia_dynamics.sources.hub import PROBE_TIMEOUT_S

__all__ = ["EvalBatch", "PILE_SAMPLE_REPO", "make_eval_batch"]

log = logging.getLogger(__name__)

PILE_SAMPLE_REPO = "NeelNanda/pile-10k"
FALLBACK_TEXT_BYTES = 400_000


@dataclass
class EvalBatch:
    tokens: Int[Tensor, "batch pos"]
    origin: dict = field(default_factory=dict)  # corpus, seed, how the windows were chosen

    def to_dict(self) -> dict:
        return {"origin": self.origin, "shape": list(self.tokens.shape), "tokens": self.tokens.tolist()}


def make_eval_batch(
    source: CheckpointSource,
    *,
    n_sequences: int = 8,
    seq_len: int = 128,
    seed: int = 0,
    text_file: str | Path | None = None,
    token_ids: str | Path | np.ndarray | None = None,
) -> EvalBatch:
    """The evaluation batch for `source` (see the module docstring for the defaults)."""
    if token_ids is not None:
        return _from_token_ids(token_ids)
    tokenizer = source.tokenizer()
    if tokenizer is None:
        raise ValueError(
            f"{source.name} has no tokenizer, so text cannot become an evaluation batch; pass token_ids "
            "(an int array of shape [batch, pos], .npy or whitespace-separated text, one sequence a line)"
        )
    seq_len = min(seq_len, source.hf_config().max_position_embeddings)
    if text_file is not None:
        text, origin = Path(text_file).read_text(errors="replace"), {"kind": "text-file", "path": str(text_file)}
    elif isinstance(source, LocalSuite) and source.heldout_text_path() is not None:
        path = source.heldout_text_path()
        text, origin = path.read_text(errors="replace"), {"kind": "suite-heldout", "path": str(path)}
    else:
        text, origin = _pile_sample_or_fallback(seed)
    tokens = np.asarray(tokenizer(text)["input_ids"], dtype=np.int64)
    windows = _random_windows(tokens, n_sequences, seq_len, seed, what=origin.get("path", origin["kind"]))
    origin |= {"seed": seed, "n_sequences": n_sequences, "seq_len": seq_len, "n_text_tokens": int(len(tokens)),
               "selection": "windows at seeded random starts (numpy default_rng(seed).choice without replacement)"}  # fmt: skip
    return EvalBatch(windows, origin)


def _random_windows(tokens: np.ndarray, n: int, seq_len: int, seed: int, what: str) -> Tensor:
    n_starts = len(tokens) - seq_len + 1
    if n_starts < n:
        raise ValueError(
            f"{what} holds {len(tokens)} tokens: too few for {n} windows of {seq_len}; "
            "use fewer or shorter sequences, or more text"
        )
    starts = np.sort(np.random.default_rng(seed).choice(n_starts, size=n, replace=False))
    return torch.from_numpy(np.stack([tokens[s : s + seq_len] for s in starts]))


def _from_token_ids(token_ids: str | Path | np.ndarray) -> EvalBatch:
    if isinstance(token_ids, np.ndarray):
        array, origin = token_ids, {"kind": "token-ids", "path": None}
    else:
        path = Path(token_ids)
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
            if len({len(r) for r in rows}) != 1:
                raise ValueError(f"{path}: every line must hold the same number of token ids")
            array = np.array(rows, dtype=np.int64)
        origin = {"kind": "token-ids", "path": str(path)}
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ValueError(f"token ids must be an integer array of shape [batch, pos], got {array.dtype} {array.shape}")
    return EvalBatch(torch.from_numpy(array.astype(np.int64)), origin)


def _pile_sample_or_fallback(seed: int) -> tuple[str, dict]:
    try:
        path, parquet = _pile_sample_file()
        import pandas as pd

        texts = pd.read_parquet(path)["text"]
        order = np.random.default_rng(seed).permutation(len(texts))[:200]
        return "\n\n".join(texts.iloc[order]), {"kind": "pile-sample", "repo": PILE_SAMPLE_REPO, "file": parquet}
    except Exception as error:  # offline, no network, or the dataset moved: never fail the sweep for it
        reason = str(error) if isinstance(error, _PileSampleUnavailable) else f"{type(error).__name__}: {error}"
        log.warning(
            "could not fetch the Pile sample %s (%s); using the offline fallback: held-out Python "
            "standard-library source text (seed %d)",
            PILE_SAMPLE_REPO,
            reason,
            seed,
        )
        from pythia_dynamics.train.corpus import load_corpus
        from pythia_dynamics.train.recipe import SuiteConfig

        corpus = load_corpus(SuiteConfig(corpus_bytes=4 * FALLBACK_TEXT_BYTES, seed=seed, heldout_fraction=0.25))
        text = "\n\n".join(corpus.heldout_docs)[:FALLBACK_TEXT_BYTES]
        return text, {"kind": "offline-fallback-stdlib", "corpus": corpus.record, "reason": reason}


class _PileSampleUnavailable(RuntimeError):
    """Why the Pile sample cannot be had now, in words for the fallback's warning."""


def _pile_sample_file() -> tuple[Path, str]:
    """The Pile sample's parquet file and its name in the dataset: from the Hugging Face cache when it is
    there (no network), else downloaded once one request without retries found the Hub answering."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download

    try:
        folder = Path(snapshot_download(PILE_SAMPLE_REPO, repo_type="dataset", allow_patterns=["*.parquet"],
                                        local_files_only=True))  # fmt: skip
        cached = sorted(folder.rglob("*.parquet"))
        if cached:
            return cached[0], cached[0].relative_to(folder).as_posix()
    except Exception as error:  # not in the cache (huggingface_hub's error type for it varies by version)
        log.debug("Pile sample not cached: %s", error)
    if constants.HF_HUB_OFFLINE:
        raise _PileSampleUnavailable("HF_HUB_OFFLINE is set and it is not in the Hugging Face cache")
    try:
        info = HfApi().dataset_info(PILE_SAMPLE_REPO, timeout=PROBE_TIMEOUT_S)
    except Exception as error:
        raise _PileSampleUnavailable(
            f"the Hub ({constants.ENDPOINT}) cannot be reached: {type(error).__name__}: {error}"
        ) from error
    parquet = sorted(s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".parquet"))[0]
    return Path(hf_hub_download(PILE_SAMPLE_REPO, parquet, repo_type="dataset")), parquet
