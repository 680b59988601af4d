"""The training text: the Python standard library's own source, or the user's files.

The stdlib is the default because every Python ships it, so a suite can be
built with no network; its sha256 is recorded because it differs between
Python versions.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .recipe import SuiteConfig

logger = logging.getLogger(__name__)

# folders of the stdlib that are mostly test data or dead code, not representative source
STDLIB_SKIP_DIRS = frozenset({"site-packages", "test", "tests", "idlelib", "lib2to3"})
USER_SUFFIXES = (".txt", ".py", ".md")
DOC_SEPARATOR = "<|endoftext|>"

# distinct numpy streams from the one config seed, so adding draws to one never shifts another
SELECT_STREAM = 1
SPLIT_STREAM = 2


@dataclass
class Corpus:
    train_docs: list[str]
    heldout_docs: list[str]
    record: dict = field(default_factory=dict)


@functools.cache  # walking the stdlib takes ~1 s; it does not change while a process runs (the lab trains dozens)
def _stdlib_files() -> tuple[tuple[str, Path], ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if STDLIB_SKIP_DIRS.intersection(rel.parts[:-1]) or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return tuple(sorted(found))


def _user_files(paths: tuple[str, ...]) -> list[tuple[str, Path]]:
    found: dict[str, Path] = {}
    for entry in paths:
        p = Path(entry).expanduser()
        if p.is_dir():
            for sub in p.rglob("*"):
                if sub.is_file() and sub.suffix in USER_SUFFIXES:
                    found[sub.resolve().as_posix()] = sub
        elif p.is_file():
            found[p.resolve().as_posix()] = p
        else:
            raise FileNotFoundError(f"corpus path {entry!r} is neither a file nor a folder")
    if not found:
        raise ValueError(f"no *.txt/*.py/*.md files found in corpus_paths {list(paths)}")
    return sorted(found.items())


def _select(files: list[tuple[str, Path]], budget: int, seed: int) -> list[tuple[str, Path]]:
    sizes = [p.stat().st_size for _, p in files]
    if sum(sizes) <= budget:
        return files
    # a seeded sample rather than a sorted prefix, which would be all asyncio/ctypes/email
    order = np.random.default_rng([seed, SELECT_STREAM]).permutation(len(files))
    chosen, total = [], 0
    for i in order:
        if total + sizes[i] <= budget:
            chosen.append(int(i))
            total += sizes[i]
    return [files[i] for i in sorted(chosen)]


def load_corpus(config: SuiteConfig) -> Corpus:
    """Read, select and split the corpus named by `config`, deterministically."""
    if config.corpus == "hf-dataset":
        docs = _dataset_docs(config)
    else:
        files = _stdlib_files() if config.corpus == "stdlib" else _user_files(config.corpus_paths)
        docs = []
        for _, path in _select(files, config.corpus_bytes, config.seed):
            text = path.read_bytes().decode("utf-8", errors="replace")
            if text.strip():  # empty __init__.py files would only add separators
                docs.append(text)
    if len(docs) < 2:
        raise ValueError(f"the corpus needs at least two non-empty files to hold one out, found {len(docs)}")

    n_heldout = min(len(docs) - 1, max(1, round(config.heldout_fraction * len(docs))))
    heldout_idx = set(np.random.default_rng([config.seed, SPLIT_STREAM]).permutation(len(docs))[:n_heldout].tolist())
    train_docs = [d for i, d in enumerate(docs) if i not in heldout_idx]
    heldout_docs = [d for i, d in enumerate(docs) if i in heldout_idx]

    joined = DOC_SEPARATOR.join(docs).encode("utf-8")
    record = {
        "kind": config.corpus,
        "dataset": config.corpus_dataset,
        "python_version": platform.python_version(),
        "n_files": len(docs),
        "n_train_files": len(train_docs),
        "n_heldout_files": len(heldout_docs),
        "n_bytes": sum(len(d.encode("utf-8")) for d in docs),
        "sha256": hashlib.sha256(joined).hexdigest(),
        "sha256_of": f"the selected files' text in sorted path order, joined by {DOC_SEPARATOR!r}",
    }
    logger.info("corpus: %d files (%d held out), %.2f MB", len(docs), len(heldout_docs), record["n_bytes"] / 1e6)
    return Corpus(train_docs=train_docs, heldout_docs=heldout_docs, record=record)


def _dataset_docs(config: SuiteConfig) -> list[str]:
    """Documents of a Hugging Face dataset (online by name, or a local folder), in the dataset's order,
    up to the byte budget. Offline, only datasets already cached or on disk can be read."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(config.corpus_dataset, split="train")
    except Exception as error:
        raise ValueError(
            f"cannot load the dataset {config.corpus_dataset!r} ({type(error).__name__}: {error}); "
            "offline, use corpus='stdlib' or corpus='files' with your own text files"
        ) from error
    if config.corpus_text_field not in dataset.column_names:
        raise ValueError(
            f"dataset {config.corpus_dataset!r} has no column {config.corpus_text_field!r}; "
            f"its columns are {dataset.column_names}"
        )
    docs, total = [], 0
    for text in dataset[config.corpus_text_field]:
        if total >= config.corpus_bytes:
            break
        if text and text.strip():
            docs.append(text)
            total += len(text.encode("utf-8"))
    return docs


def heldout_text(docs: list[str], max_bytes: int) -> str:
    """The held-out documents joined by the separator, cut to at most `max_bytes` of UTF-8."""
    text = DOC_SEPARATOR.join(docs)
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    # a cut through a multi-byte character drops its stray bytes instead of inventing a U+FFFD
    return raw[:max_bytes].decode("utf-8", errors="ignore")
