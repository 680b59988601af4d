"""Share and query results: a store as a Hugging Face dataset repository, and SQL over a store.

A store is already a set of Parquet tables keyed by model, step and analysis, which is what the Hub's
dataset viewer, `datasets.load_dataset`, pandas, DuckDB and polars read. So:

- `dataset_folder(store, folder)` lays a store out as a dataset repository: every file of the store as it
  is (so a pull gives it back bit for bit), plus a dataset card (`README.md`) whose YAML front matter
  declares one configuration per analysis and table: `<analysis>` (its scalars) and `<analysis>-arrays`;
- `push(store, repo_id)` uploads that folder with `huggingface_hub`'s own `create_repo` and `upload_folder`
  (`dry_run=` writes the folder and uploads nothing);
- `pull(repo_id, out)` downloads a published store with `snapshot_download` (through the Hugging Face
  cache, so it works offline on what is cached) and copies it into `out`;
- `published_store(repo_id)` opens a published store in the cache in place (read-only), for `sweep(...,
  reuse=...)` and `query`;
- `query(store, sql)` runs DuckDB over a store's complete results as two tables, `scalars` and `arrays`.

Only complete, undamaged results are pushed, pulled into a sweep or queried (`Store.results`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from pythia_dynamics import __version__
from pythia_dynamics.storage import FsspecStorage
from pythia_dynamics.store import ARRAYS_SCHEMA, SCALARS_SCHEMA, Store, StoreError

__all__ = ["HF_PREFIX", "dataset_card", "dataset_folder", "published_store", "pull", "push", "query"]

log = logging.getLogger(__name__)

HF_PREFIX = "hf://datasets/"  # how `query` and `sweep(reuse=)` accept a published store, besides ORG/NAME
CARD = "README.md"
TABLES = {"scalars": SCALARS_SCHEMA, "arrays": ARRAYS_SCHEMA}


def dataset_folder(store: Store | str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Write `store` as a dataset repository into the empty or new `folder`: its files and a dataset card.

    Refuses a store with damaged results (`pythia-dynamics verify STORE --repair` first), so that nothing
    published is unreadable.
    """
    store = store if isinstance(store, Store) else Store(store)
    damaged = [problem for problem in store.verify() if problem.kind == "damaged"]
    if damaged:
        raise StoreError(
            f"{store.path} has {len(damaged)} damaged result(s) (e.g. {damaged[0]}); run "
            f"`pythia-dynamics verify {store.path} --repair` and sweep again before publishing it"
        )
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise StoreError(f"{folder} is not empty; give a new or empty folder for the dataset repository")
    folder.mkdir(parents=True, exist_ok=True)
    for key in store.storage.files():  # a write in progress (a local .tmp) is not part of the store
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.storage.read_bytes(key))
    (folder / CARD).write_text(dataset_card(store), encoding="utf-8")
    return folder


def dataset_card(store: Store) -> str:
    """The dataset card: configurations for the Hub and `datasets`, and what the tables hold."""
    results = [info for info in store.results() if info.problem is None]
    analyses = sorted({info.analysis for info in results})
    with_arrays = {info.analysis for info in results if store.has_arrays(info.model, info.step, info.analysis)}
    configs = []
    for analysis in analyses:
        configs.append(_config(analysis, f"results/*/{analysis}/*.scalars.parquet"))
        if analysis in with_arrays:
            configs.append(_config(f"{analysis}-arrays", f"results/*/{analysis}/*.arrays.parquet"))
    models = []
    for model in sorted({info.model for info in results}):
        steps = sorted({info.step for info in results if info.model == model})
        models.append(f"| `{model}` | {len(steps)} | {steps[0]} | {steps[-1]} |")
    versions = []
    for analysis in analyses:
        found = sorted({str((i.provenance or {}).get("analysis_version", 1)) for i in results if i.analysis == analysis})
        packages = sorted({(i.provenance or {}).get("package_version", "unrecorded") for i in results if i.analysis == analysis})
        versions.append(f"| `{analysis}` | {', '.join(found)} | {', '.join(packages)} |")
    return f"""---
pretty_name: pythia_dynamics results
tags:
- pythia-dynamics
- training-dynamics
- interpretability
configs:
{''.join(configs) if configs else '[]'}
---

# pythia_dynamics results

Results of [pythia_dynamics](https://github.com/pythia-dynamics/pythia-dynamics) {__version__} analyses over the
training checkpoints of the models below: one row per number (`scalars`) or per array (`arrays`), keyed by
`model`, `step` (training step of the checkpoint) and `analysis`, with `component` (TransformerLens parameter
names such as `W_Q`, `W_out`, `W_U`), `layer` and `head`. The repository is a pythia_dynamics results store as
written, so `pythia-dynamics pull ORG/NAME --out STORE` gives the store back bit for bit, and
`pythia-dynamics sweep SOURCE --out STORE --reuse ORG/NAME` takes results from here instead of recomputing
them, for exactly the checkpoints whose content hash and analysis version match. The table schemas and what
each result's Parquet footer records (its provenance) are in the package's `docs/store.md`.

It reproduces and extends Millidge & Black's study of Pythia's training dynamics (AI Alignment Forum, 2023).

## Loading

```python
import datasets
datasets.load_dataset("ORG/NAME", "{analyses[0] if analyses else 'weight_norms'}")   # one configuration per analysis; "<analysis>-arrays" for its arrays
```

## Models and checkpoints

| model | checkpoints | first step | last step |
|---|---|---|---|
{chr(10).join(models)}

## Analyses and versions

| analysis | analysis version(s) | pythia_dynamics version(s) |
|---|---|---|
{chr(10).join(versions)}
"""


def _config(name: str, pattern: str) -> str:
    return f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {pattern}\n"


def push(
    store: Store | str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: str | os.PathLike | None = None,
    token: str | None = None,
) -> Path | str:
    """Publish `store` as the dataset repository `repo_id` (ORG/NAME); returns its URL.

    `dry_run=FOLDER` writes exactly the folder that would be uploaded and returns it, uploading nothing.
    """
    _check_repo_id(repo_id)
    if dry_run is not None:
        return dataset_folder(store, dry_run)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="pythia-dynamics-push-") as tmp:
        folder = dataset_folder(store, Path(tmp) / "dataset")
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=folder, repo_id=repo_id, repo_type="dataset",
            commit_message=f"pythia_dynamics {__version__} results store",
        )  # fmt: skip
    return str(url)


def published_store(repo_id: str, *, revision: str | None = None, cache_dir=None, token: str | None = None) -> Store:
    """A published store, downloaded into (or found in) the Hugging Face cache and opened there, read-only."""
    from huggingface_hub import snapshot_download

    repo_id = repo_id.removeprefix(HF_PREFIX)
    _check_repo_id(repo_id)
    folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir, token=token)
    return Store(folder)


def pull(repo_id: str, out: str | os.PathLike, *, revision: str | None = None, cache_dir=None,
         token: str | None = None) -> Store:  # fmt: skip
    """Copy a published store into `out` (new or empty): the same files, bit for bit, without the card."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} is not empty; pull into a new or empty folder")
    published = published_store(repo_id, revision=revision, cache_dir=cache_dir, token=token)
    for path in sorted(published.path.rglob("*")):
        if path.is_file() and path.relative_to(published.path).as_posix() != CARD:
            target = out / path.relative_to(published.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # the cache holds links to blobs: copy their content
    return Store(out)


def query(store: Store | str | os.PathLike, sql: str) -> pd.DataFrame:
    """Run `sql` with DuckDB over the store's complete results, as the tables `scalars` and `arrays`.

    `store` is a Store, a store folder, or a published store (`hf://datasets/ORG/NAME`, read through the
    Hugging Face cache). Damaged results and leftovers of interrupted writes are not in the tables.
    """
    import duckdb

    if isinstance(store, str) and store.startswith(HF_PREFIX):
        store = published_store(store)
    store = store if isinstance(store, Store) else Store(store)
    connection = duckdb.connect()
    try:
        if isinstance(store.storage, FsspecStorage):  # a store at a URL: DuckDB reads it through the same filesystem
            connection.register_filesystem(store.storage.fs)
        for table, schema in TABLES.items():
            files = _complete_files(store, table)
            if files:
                connection.read_parquet(files, union_by_name=True).create_view(table)
            else:  # an empty table with the store's columns and types, so queries still run
                connection.from_arrow(schema.empty_table()).create_view(table)
        try:
            return connection.execute(sql).df()
        except duckdb.Error as error:  # a typo in the SQL: say what the tables are
            columns = {table: ", ".join(schema.names) for table, schema in TABLES.items()}
            raise ValueError(
                f"the query failed: {error}. The tables are scalars({columns['scalars']}) and "
                f"arrays({columns['arrays']})"
            ) from None
    finally:
        connection.close()


def _complete_files(store: Store, table: str) -> list[str]:
    complete = (info for info in store.results() if info.problem is None)
    return [
        store.result_file(info.model, info.step, info.analysis, table)
        for info in complete
        if table == "scalars" or store.has_arrays(info.model, info.step, info.analysis)
    ]


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a dataset repository is named ORG/NAME (e.g. my-lab/pythia-70m-dynamics), got {repo_id!r}")
