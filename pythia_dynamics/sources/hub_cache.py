"""Write checkpoint folders into a Hugging Face Hub cache, in the layout `huggingface_hub` reads.

    <cache>/models--<org>--<name>/blobs/<sha256>
    <cache>/models--<org>--<name>/snapshots/<commit>/<file> -> ../../blobs/<sha256>
    <cache>/models--<org>--<name>/refs/<revision>            (holds <commit>)

(`datasets--<org>--<name>` for a dataset.)

This is how the tests and the benchmark exercise the real revision-resolution code offline, and how a
user can mirror a local suite so that Hub-oriented tools read it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["write_hub_cache"]


def write_hub_cache(
    cache_dir: str | Path,
    repo_id: str,
    revisions: Mapping[str, str | Path],
    main: str | None = None,
    repo_type: str = "model",
) -> Path:
    """Add each `revision -> folder` to the cache as a commit; `main` (default: the last) gets refs/main.

    `repo_type` is "model" or "dataset", as huggingface_hub names them."""
    if repo_type not in ("model", "dataset"):
        raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    repo_dir = Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    for sub in ("blobs", "snapshots", "refs"):
        (repo_dir / sub).mkdir(parents=True, exist_ok=True)
    for revision, folder in revisions.items():
        folder = Path(folder)
        # Files in sub-folders too (a results store is nested), named by their path in the repository.
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        digests = {name: _sha256(path) for name, path in files.items()}
        commit = hashlib.sha1(f"{repo_id}@{revision}:{sorted(digests.items())}".encode()).hexdigest()
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(exist_ok=True)
        for name, path in files.items():
            blob = repo_dir / "blobs" / digests[name]
            if not blob.exists():
                tmp = blob.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(path.read_bytes())
                os.replace(tmp, blob)
            link = snapshot / name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.relpath(blob, link.parent))
        (repo_dir / "refs" / revision).write_text(commit)
    main = main or list(revisions)[-1]
    (repo_dir / "refs" / "main").write_text((repo_dir / "refs" / main).read_text())
    return repo_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
