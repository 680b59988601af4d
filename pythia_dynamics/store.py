"""The results store: one folder of Parquet files, one pair per (model, checkpoint step, analysis).

Layout (see docs/store.md for the table schemas)::

    <root>/store.json                                        schema version, package version, created
    <root>/sources/<model_slug>.json                         free-form metadata about a model's source
    <root>/results/<model_slug>/<analysis>/step<N>.scalars.parquet
    <root>/results/<model_slug>/<analysis>/step<N>.arrays.parquet     (only when there are arrays)
    <root>/failures/<model_slug>/step<N>.<analysis>.json

`<root>` is a local folder, or an fsspec URL such as `s3://bucket/prefix` (docs/url-stores.md);
`pythia_dynamics.storage` is the only module that touches the files. Locally every file is written
under a unique temporary name in its final folder and moved into place with `os.replace`; on object
storage it is sent whole in one PUT. Either way a final name only ever holds a whole file. A
result's scalars file is put in place last, and its Parquet footer records how many rows both files
hold and how the result was computed (package and analysis version, load options, checkpoint content hash: its *provenance*).
A result is complete when its scalars file is there and both footers agree with what was written; a
damaged one (a truncated or corrupt file, a missing arrays file) counts as missing, so the next sweep
recomputes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pythia_dynamics.storage import LocalStorage, open_storage

__all__ = [
    "ARRAY_COLUMNS",
    "IDENTITY_COLUMNS",
    "MATRIX_COLUMNS",
    "SCALAR_COLUMNS",
    "SCHEMA_VERSION",
    "ResultInfo",
    "Store",
    "StoreError",
    "StoreProblem",
    "describe_provenance",
    "describe_steps",
    "is_store",
    "array_record",
    "model_from_slug",
    "model_slug",
    "read_arrays",
    "read_scalars",
    "row_to_numpy",
]

log = logging.getLogger(__name__)

# Bump when the layout or a table schema changes in a way old readers would misread.
SCHEMA_VERSION = 1

# Which result a row belongs to (filled in by the store), and which matrix (or part of one) it describes.
IDENTITY_COLUMNS = ("model", "step", "analysis")
MATRIX_COLUMNS = ("component", "layer", "head")
SCALAR_COLUMNS = (*IDENTITY_COLUMNS, *MATRIX_COLUMNS, "stat", "value")
ARRAY_COLUMNS = (*IDENTITY_COLUMNS, *MATRIX_COLUMNS, "name", "shape", "values", "text")

SCALARS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("step", pa.int64()),
        ("analysis", pa.string()),
        ("component", pa.string()),
        ("layer", pa.int64()),
        ("head", pa.int64()),
        ("stat", pa.string()),
        ("value", pa.float64()),
    ]
)
ARRAYS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("step", pa.int64()),
        ("analysis", pa.string()),
        ("component", pa.string()),
        ("layer", pa.int64()),
        ("head", pa.int64()),
        ("name", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("values", pa.list_(pa.float64())),
        ("text", pa.list_(pa.string())),
    ]
)

_SCALAR_KEY = [*MATRIX_COLUMNS, "stat"]
_ARRAY_KEY = [*MATRIX_COLUMNS, "name"]
# The key under which a scalars file's footer records its row counts and provenance (JSON).
RESULT_METADATA_KEY = b"pythia_dynamics.result"
_RESULT_FILE = re.compile(r"^step(\d+)\.(scalars|arrays)\.parquet$")
_FAILURE_FILE = re.compile(r"^step(\d+)\.(.+)\.json$")
AUDIT_ANALYSIS = "audit"  # pythia_dynamics.audit's rows: one per audited checkpoint, whether swept or not
# Analysis names become folder names, so keep them to one safe path component.
_ANALYSIS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class StoreError(ValueError):
    """A store that cannot be opened, or a result that cannot be written as given."""


@dataclass(frozen=True)
class ResultInfo:
    """One stored result as its files' footers describe it."""

    model: str
    step: int
    analysis: str
    provenance: dict | None  # how it was computed (None: written before provenance was recorded)
    problem: str | None  # why it cannot be trusted (None: complete)


@dataclass(frozen=True)
class StoreProblem:
    """Something `Store.verify` found: a damaged result, or one analysis's results computed in different ways."""

    model: str
    analysis: str
    steps: tuple[int, ...]
    kind: str  # "damaged" or "mixed"
    detail: str

    def __str__(self) -> str:
        return f"{self.model} {self.analysis} {describe_steps(self.steps)}: {self.kind}: {self.detail}"


def describe_steps(steps) -> str:
    """'steps 0, 1, 2' (the first eight, and how many in all), for messages."""
    steps = sorted(steps)
    shown = ", ".join(map(str, steps[:8])) + (f", ... ({len(steps)} in all)" if len(steps) > 8 else "")
    return f"step{'s' if len(steps) > 1 else ''} {shown}"


# ---------------------------------------------------------------------------------------------
# Names on disk

_SLUG_SAFE = frozenset(string.ascii_letters + string.digits + "_.")


def model_slug(model: str) -> str:
    """A folder/file name for a model name, reversible by `model_from_slug`.

    `/` becomes `--` (as in the Hugging Face cache, so `EleutherAI/pythia-70m` reads as
    `EleutherAI--pythia-70m`); other unsafe characters are %-escaped. A `-` next to a `-` or `/`
    is escaped too, which is what keeps `--` unambiguous.
    """
    if not isinstance(model, str) or not model:
        raise StoreError(f"a model name must be a non-empty string, got {model!r}")
    out = []
    for i, ch in enumerate(model):
        if ch == "/":
            out.append("--")
        elif ch == "-":
            crowded = (i > 0 and model[i - 1] in "-/") or (i + 1 < len(model) and model[i + 1] in "-/")
            out.append("%2D" if crowded else "-")
        elif ch in _SLUG_SAFE and not (i == 0 and ch == "."):  # no hidden files, no "." or ".."
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
    return "".join(out)


def model_from_slug(slug: str) -> str:
    """The model name `model_slug` made `slug` from."""
    # Only a `/` makes a run of dashes (two per slash); a literal `-` is always alone.
    return unquote(re.sub(r"-{2,}", lambda m: "/" * (len(m.group()) // 2), slug))


def _check_analysis(analysis: str) -> str:
    if not isinstance(analysis, str) or not _ANALYSIS_NAME.match(analysis):
        raise StoreError(
            f"analysis name {analysis!r} is not valid: it becomes a folder name, so use letters, digits, "
            "'_', '.', '-' (not starting with '.' or '-')"
        )
    return analysis


def _check_step(step: Any) -> int:
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
        raise StoreError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


# ---------------------------------------------------------------------------------------------
# JSON files (written atomically by pythia_dynamics.storage, as every file)


def _json_default(obj: Any) -> Any:
    # Token ids often arrive as numpy arrays or tensors; both have .tolist().
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _write_json(storage, key: str, obj: Any, fsync: bool) -> None:
    data = json.dumps(obj, indent=2, default=_json_default).encode("utf-8") + b"\n"
    storage.write_atomic(key, lambda f: f.write(data), fsync)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Validation: DataFrame in, Arrow table with the exact schema out


def _as_list(value: Any) -> list | None:
    """A filter argument as a list: None means no filter; a scalar means a one-item list."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _fill_identity(df: pd.DataFrame, what: str, model: str, step: int, analysis: str) -> pd.DataFrame:
    """Fill model/step/analysis where absent; reject rows that name a different result."""
    df = df.copy()
    for col, expected in zip(IDENTITY_COLUMNS, (model, step, analysis), strict=True):
        if col not in df.columns:
            df[col] = expected
            continue
        col_values = df[col].astype(object)
        if col == "step":
            numeric = pd.to_numeric(col_values, errors="coerce")
            bad = ~(numeric == expected)
        else:
            bad = col_values != expected
        if bad.any():
            found = sorted({repr(v) for v in col_values[bad]})[:5]
            raise StoreError(
                f"{what} column {col!r} must be {expected!r} (the result being written) in every row, "
                f"or be left out to be filled in; {int(bad.sum())} row(s) have {', '.join(found)}"
            )
    return df


def _check_columns(df: Any, what: str, allowed: tuple[str, ...], required: list[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise StoreError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    extra = [str(c) for c in df.columns if c not in allowed]
    if extra:
        raise StoreError(f"{what} has unexpected column(s) {extra}; the allowed columns are {list(allowed)}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise StoreError(
            f"{what} is missing column(s) {missing}; required: {required} "
            "(model, step and analysis are filled in when left out)"
        )


def _string_column(df: pd.DataFrame, what: str, col: str) -> pa.Array:
    values = df[col].astype(object)
    bad = values.map(lambda v: not isinstance(v, str))
    if bad.any():
        raise StoreError(f"{what} column {col!r} must hold non-null strings; found {values[bad].iloc[0]!r}")
    return pa.array(values.tolist(), type=pa.string())


def _index_column(df: pd.DataFrame, what: str, col: str) -> pa.Array:
    """layer/head: whole numbers >= 0, or null where they do not apply."""
    try:
        values = pd.array(df[col].astype(object).map(lambda v: None if _is_missing(v) else v), dtype="Int64")
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} column {col!r} must hold whole numbers or nulls: {e}") from None
    if (values < 0).any():
        raise StoreError(f"{what} column {col!r} must be >= 0 (or null where it does not apply)")
    return pa.array(values, type=pa.int64())


def _check_unique(df: pd.DataFrame, what: str, key: list[str]) -> None:
    dup = df.duplicated(subset=key, keep=False)
    if dup.any():
        example = df.loc[dup, key].head(3).to_dict("records")
        raise StoreError(
            f"{what} has {int(dup.sum())} rows that share a ({', '.join(key)}) key, so they could not be "
            f"told apart when read back; e.g. {example}"
        )


def _scalars_table(df: Any, model: str, step: int, analysis: str) -> pa.Table:
    what = "scalars"
    _check_columns(df, what, SCALAR_COLUMNS, list(SCALAR_COLUMNS[len(IDENTITY_COLUMNS) :]))
    df = _fill_identity(df, what, model, step, analysis).reset_index(drop=True)
    try:
        value = pd.to_numeric(df["value"].astype(object).map(lambda v: np.nan if _is_missing(v) else v))
        value = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise StoreError(f"scalars column 'value' must hold numbers (NaN allowed): {e}") from None
    columns = {
        "model": pa.array([model] * len(df), type=pa.string()),
        "step": pa.array(np.full(len(df), step, dtype=np.int64)),
        "analysis": pa.array([analysis] * len(df), type=pa.string()),
        "component": _string_column(df, what, "component"),
        "layer": _index_column(df, what, "layer"),
        "head": _index_column(df, what, "head"),
        "stat": _string_column(df, what, "stat"),
        "value": pa.array(value, type=pa.float64()),
    }
    table = pa.table(columns, schema=SCALARS_SCHEMA)
    _check_unique(table.select(_SCALAR_KEY).to_pandas(), what, _SCALAR_KEY)
    return table


def _numeric_array(data: Any) -> np.ndarray:
    if hasattr(data, "detach"):  # a torch tensor, without importing torch; double() also handles bf16
        data = data.detach().cpu().double().numpy()
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise StoreError(f"array values must be numeric (bool, int or float), got dtype {arr.dtype}")
    return arr.astype(np.float64)


def array_record(component: str, layer: int | None, head: int | None, name: str, data: Any) -> dict:
    """One row of an arrays table.

    `data` is numeric (a numpy array, nested list, tensor...) -> `shape` + `values` (flattened
    row-major), or strings (a list of str, or a numpy str array) -> `shape` + `text`. Use
    `row_to_numpy` to get the array back.
    """
    record = {"component": component, "layer": layer, "head": head, "name": name}
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data) and len(data) > 0:
        return {**record, "shape": [len(data)], "values": None, "text": list(data)}
    if isinstance(data, np.ndarray) and data.dtype.kind in "USO":
        flat = data.ravel(order="C").tolist()
        if not all(isinstance(t, str) for t in flat):
            raise StoreError(f"array {name!r}: an object array must hold only strings")
        return {**record, "shape": list(data.shape), "values": None, "text": flat}
    arr = _numeric_array(data)
    return {**record, "shape": list(arr.shape), "values": arr.ravel(order="C"), "text": None}


def _arrays_table(df: Any, model: str, step: int, analysis: str) -> pa.Table:
    what = "arrays"
    if isinstance(df, list):
        df = pd.DataFrame(df, columns=None if df else list(ARRAY_COLUMNS[3:]))
    _check_columns(df, what, ARRAY_COLUMNS, [*_ARRAY_KEY, "shape"])
    df = _fill_identity(df, what, model, step, analysis).reset_index(drop=True)
    names = _string_column(df, what, "name").to_pylist()
    shapes, values, texts = [], [], []
    # Whole columns as lists: indexing the frame cell by cell costs more than the rest of the write.
    cells = {column: df[column].tolist() if column in df.columns else [None] * len(df) for column in ("values", "text")}
    for i, (row_name, shape_cell) in enumerate(zip(names, df["shape"].tolist(), strict=True)):
        value_cell, text_cell = cells["values"][i], cells["text"][i]
        where = f"arrays row {i} ({row_name!r})"
        try:
            shape = [int(s) for s in shape_cell]
        except (TypeError, ValueError):
            raise StoreError(f"{where}: shape must be a list of ints, got {shape_cell!r}") from None
        if any(s < 0 for s in shape):
            raise StoreError(f"{where}: shape must not have negative sizes, got {shape}")
        has_values, has_text = not _is_missing(value_cell), not _is_missing(text_cell)
        if has_values == has_text:
            raise StoreError(f"{where}: exactly one of 'values' (numeric) and 'text' (strings) must be set")
        if has_values:
            try:
                flat = np.asarray(value_cell, dtype=np.float64).ravel()
            except (TypeError, ValueError):
                raise StoreError(f"{where}: values must be a list of numbers (use 'text' for strings)") from None
            text = None
        else:
            text = list(text_cell)
            if not all(isinstance(t, str) for t in text):
                raise StoreError(f"{where}: text must be a list of strings")
            flat = None
        size = len(flat) if has_values else len(text)
        if size != math.prod(shape):
            raise StoreError(f"{where}: shape {shape} needs {math.prod(shape)} elements, got {size}")
        shapes.append(shape)
        values.append(flat)
        texts.append(text)
    n = len(df)
    columns = {
        "model": pa.array([model] * n, type=pa.string()),
        "step": pa.array(np.full(n, step, dtype=np.int64)),
        "analysis": pa.array([analysis] * n, type=pa.string()),
        "component": _string_column(df, what, "component"),
        "layer": _index_column(df, what, "layer"),
        "head": _index_column(df, what, "head"),
        "name": pa.array(names, type=pa.string()),
        "shape": pa.array(shapes, type=pa.list_(pa.int64())),
        "values": pa.array(values, type=pa.list_(pa.float64())),
        "text": pa.array(texts, type=pa.list_(pa.string())),
    }
    table = pa.table(columns, schema=ARRAYS_SCHEMA)
    _check_unique(table.select(_ARRAY_KEY).to_pandas(), what, _ARRAY_KEY)
    return table


def row_to_numpy(row: Mapping | pd.Series) -> np.ndarray:
    """The array an arrays-table row holds, reshaped: float64 for numeric rows, str for text rows."""
    shape = tuple(int(s) for s in row["shape"])
    if not _is_missing(row["text"]):
        return np.array(list(row["text"]), dtype=str).reshape(shape)
    return np.array(row["values"], dtype=np.float64).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Reading


def _load(storage, key: str, schema: pa.Schema, skip: tuple[str, ...] = ()) -> pa.Table:
    """One result file, with exactly the store's columns and types (raises if it is damaged); columns in
    `skip` are not read (decoding millions of token strings costs seconds) and come back as nulls."""
    with storage.parquet_source(key, whole=True) as source, pq.ParquetFile(source) as f:
        wanted = [name for name in schema.names if name not in skip]
        table = f.read(columns=wanted).select(wanted)
    for name in skip:
        table = table.append_column(schema.field(name), pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def _read_metadata(storage, key: str) -> pq.FileMetaData:
    with storage.parquet_source(key, whole=False) as source:
        return pq.read_metadata(source)


def _to_pandas(table: pa.Table, sort_by: list[str]) -> pd.DataFrame:
    # Nullable dtypes so a missing layer/head stays <NA> instead of turning the column into floats.
    mapper = {pa.string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype()}.get
    df = table.to_pandas(types_mapper=mapper)
    df["step"] = df["step"].astype(np.int64)  # never null, so a plain int64
    return df.sort_values(sort_by, kind="stable").reset_index(drop=True)


def _mask(table: pa.Table, column: str, wanted: list) -> pa.Array:
    """Rows whose `column` is in `wanted`; a None in `wanted` matches nulls (e.g. layer=[None])."""
    present = [v for v in wanted if v is not None]
    value_type = table.schema.field(column).type
    if value_type == pa.int64():
        present = [int(v) for v in present]
    else:
        present = [str(v) for v in present]
    mask = pc.is_in(table[column], value_set=pa.array(present, type=value_type))
    mask = pc.fill_null(mask, False)
    if None in wanted:
        mask = pc.or_(mask, pc.is_null(table[column]))
    return mask


_META = "store.json"


def is_store(location: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """Whether a store is at `location` (a folder or URL holding a store.json)."""
    return open_storage(location, storage_options).exists(_META)


class Store:
    """A results store. `Store(path)` opens one; `Store.create(path)` or `Store(path, create=True)` makes one.

    `path` is a local folder, or an fsspec URL (a str with `://`: `s3://bucket/prefix`, `memory://name`,
    `file:///abs/path`); `storage_options` go to the URL's filesystem (credentials, `endpoint_url`, ...),
    which otherwise uses fsspec's and the backend's usual configuration (docs/url-stores.md).

    Attributes: `location`, the store as a str (the folder or the URL, for messages and for opening it
    again); `path`, a `pathlib.Path` for a local store and the URL (str) for a URL store; `name`, its last
    component; `storage`, the backend (`pythia_dynamics.storage`).

    Creating is idempotent and safe from several processes at once. `fsync=False` skips flushing
    each file to disk before it is renamed into place: faster, and still atomic against a killed
    process, but not against a power cut (it has no effect on object storage).
    """

    def __init__(
        self, path: str | os.PathLike, create: bool = False, fsync: bool = True, storage_options: dict | None = None
    ) -> None:
        self.storage = open_storage(path, storage_options)
        self.location = self.storage.location
        self.path: Path | str = self.storage.root if isinstance(self.storage, LocalStorage) else self.location
        self.fsync = fsync
        meta = _META
        if create and not self.storage.exists(meta):
            from pythia_dynamics import __version__  # here, not at import, so __init__ may import us

            # Concurrent creators each write a whole, equally valid store.json; the last one stays.
            info = {
                "format": "pythia_dynamics results store",
                "schema_version": SCHEMA_VERSION,
                "pythia_dynamics_version": __version__,
                "created": _now(),
            }
            _write_json(self.storage, meta, info, fsync)
        try:
            self.info = json.loads(self.storage.read_bytes(meta))
            version = self.info["schema_version"]
        except FileNotFoundError:
            raise StoreError(
                f"{self.location} is not a pythia_dynamics store (no store.json there); "
                "make one with Store.create(path) or Store(path, create=True)"
            ) from None
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(
                f"{self.location}/{meta} is not a valid store.json ({type(e).__name__}: {e})"
            ) from None
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"store {self.location} has schema_version {version!r}, but this pythia_dynamics reads "
                f"schema_version {SCHEMA_VERSION}; use a matching pythia_dynamics version or a new store"
            )

    @classmethod
    def create(cls, path: str | os.PathLike, fsync: bool = True, storage_options: dict | None = None) -> Store:
        """Make a store at `path` (or open the one already there)."""
        return cls(path, create=True, fsync=fsync, storage_options=storage_options)

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    @property
    def name(self) -> str:
        """The store's last path component (its folder name, or the URL's last part)."""
        return self.path.name if isinstance(self.path, Path) else self.location.rsplit("/", 1)[-1]

    # ---- keys: file names relative to the store's root, with "/" separators

    def _result_dir(self, model: str, analysis: str) -> str:
        return f"results/{model_slug(model)}/{_check_analysis(analysis)}"

    def _scalars_key(self, model: str, step: int, analysis: str) -> str:
        return f"{self._result_dir(model, analysis)}/step{_check_step(step)}.scalars.parquet"

    def _arrays_key(self, model: str, step: int, analysis: str) -> str:
        return f"{self._result_dir(model, analysis)}/step{_check_step(step)}.arrays.parquet"

    def _failure_key(self, model: str, step: int, analysis: str) -> str:
        return f"failures/{model_slug(model)}/step{_check_step(step)}.{_check_analysis(analysis)}.json"

    def result_file(self, model: str, step: int, analysis: str, table: str = "scalars") -> str:
        """Where one result's `table` ("scalars" or "arrays") file is: a local path or a URL, as a str."""
        if table not in ("scalars", "arrays"):
            raise ValueError(f"table must be 'scalars' or 'arrays', got {table!r}")
        key = (self._scalars_key if table == "scalars" else self._arrays_key)(model, step, analysis)
        return str(self.storage.full(key)) if isinstance(self.storage, LocalStorage) else f"{self.location}/{key}"

    def has_arrays(self, model: str, step: int, analysis: str) -> bool:
        """Whether the result has an arrays file."""
        return self.storage.exists(self._arrays_key(model, step, analysis))

    # ---- sources

    def write_source_meta(self, model: str, meta: dict) -> None:
        """Record free-form JSON metadata about `model`'s source (checkpoints, eval batch, options)."""
        if not isinstance(meta, Mapping):
            raise StoreError(f"source metadata must be a dict, got {type(meta).__name__}")
        try:
            _write_json(self.storage, f"sources/{model_slug(model)}.json", dict(meta), self.fsync)
        except TypeError as e:
            raise StoreError(f"source metadata for {model!r} is not JSON serialisable: {e}") from None

    def source_meta(self, model: str) -> dict | None:
        """The metadata `write_source_meta` recorded for `model`, or None if there is none."""
        try:
            return json.loads(self.storage.read_bytes(f"sources/{model_slug(model)}.json"))
        except FileNotFoundError:
            return None

    # ---- writing

    def write_result(
        self,
        model: str,
        step: int,
        analysis: str,
        scalars: pd.DataFrame,
        arrays: pd.DataFrame | list[dict] | None = None,
        provenance: Mapping | None = None,
    ) -> None:
        """Store one analysis result for one checkpoint, replacing any earlier one.

        `provenance` (JSON-serialisable) says how the result was computed; the sweep records the package
        and analysis versions, load options and checkpoint content hash (docs/store.md). It goes into the
        scalars file's footer with both files' row counts, which is how a damaged result is recognised.

        Both tables are validated before anything on disk changes, so a rejected result leaves the
        store as it was. Then: the old scalars file goes first (the result reads as incomplete), the
        arrays file is put in place, and the scalars file last (the result reads as complete).
        """
        # Bad names fail here, before any other work.
        model_slug(model)
        _check_analysis(analysis)
        step = _check_step(step)
        scalars_table = _scalars_table(scalars, model, step, analysis)
        arrays_table = None if arrays is None else _arrays_table(arrays, model, step, analysis)
        if arrays_table is not None and arrays_table.num_rows == 0:
            arrays_table = None  # most analyses have none; an empty file each would double the file count
        footer = {
            "scalars_rows": scalars_table.num_rows,
            "arrays_rows": 0 if arrays_table is None else arrays_table.num_rows,
            "provenance": dict(provenance or {}),
        }
        try:
            footer_json = json.dumps(footer, default=_json_default)
        except TypeError as e:
            raise StoreError(f"provenance of {model!r} step {step} {analysis!r} is not JSON serialisable: {e}") from None
        scalars_table = scalars_table.replace_schema_metadata({RESULT_METADATA_KEY: footer_json})
        scalars_key = self._scalars_key(model, step, analysis)
        arrays_key = self._arrays_key(model, step, analysis)

        # Without this, a writer killed between the two renames could pair old scalars with new arrays.
        self.storage.remove(scalars_key)
        if arrays_table is None:
            self.storage.remove(arrays_key)  # a stale one from an earlier run would otherwise be read as this one's
        else:
            self.storage.write_atomic(arrays_key, lambda f: pq.write_table(arrays_table, f), self.fsync)
        self.storage.write_atomic(scalars_key, lambda f: pq.write_table(scalars_table, f), self.fsync)
        self.storage.remove(self._failure_key(model, step, analysis))

    def adopt(self, other: Store, model: str, step: int, analysis: str) -> None:
        """Copy one complete result of another store into this one, file for file (footer and provenance
        included), replacing any earlier one, in the order `write_result` writes: arrays, then scalars."""
        scalars_key, arrays_key = self._scalars_key(model, step, analysis), self._arrays_key(model, step, analysis)
        scalars = other.storage.read_bytes(scalars_key)
        try:
            arrays = other.storage.read_bytes(arrays_key)
        except FileNotFoundError:
            arrays = None
        self.storage.remove(scalars_key)
        if arrays is None:
            self.storage.remove(arrays_key)
        else:
            self.storage.write_atomic(arrays_key, lambda f: f.write(arrays), self.fsync)
        self.storage.write_atomic(scalars_key, lambda f: f.write(scalars), self.fsync)
        self.storage.remove(self._failure_key(model, step, analysis))

    def write_failure(self, model: str, step: int, analysis: str, message: str) -> None:
        """Record that an analysis failed on a checkpoint; a later successful write removes it."""
        step = _check_step(step)
        record = {"model": model, "step": step, "analysis": analysis, "time": _now(), "message": str(message)}
        _write_json(self.storage, self._failure_key(model, step, analysis), record, self.fsync)

    # ---- what is there (directory listings only)

    def _folders(self, key: str) -> list[str]:
        return sorted(name for name, is_dir in self.storage.entries(key) if is_dir)

    def _model_dirs(self, models: list | None) -> list[tuple[str, str]]:
        """(model, key of its results folder) for the wanted models (all, if None) that have one."""
        present = self._folders("results")
        if models is not None:
            wanted = [(m, model_slug(m)) for m in dict.fromkeys(models)]
            return [(m, f"results/{slug}") for m, slug in wanted if slug in present]
        return [(model_from_slug(slug), f"results/{slug}") for slug in present]

    def _result_files(self, models=None, analyses=None, steps=None) -> list[tuple[str, str, int, str]]:
        """(model, analysis, step, folder key) of each complete result matching the filters."""
        steps_wanted = None if steps is None else {_check_step(s) for s in steps}
        found = []
        for model, model_dir in self._model_dirs(models):
            present = self._folders(model_dir)
            names = present if analyses is None else [a for a in dict.fromkeys(analyses) if a in present]
            for analysis in names:
                folder = f"{model_dir}/{analysis}"
                for name, _ in self.storage.entries(folder):
                    m = _RESULT_FILE.match(name)
                    if m and m.group(2) == "scalars":
                        step = int(m.group(1))
                        if steps_wanted is None or step in steps_wanted:
                            found.append((model, analysis, step, folder))
        found.sort(key=lambda t: (t[0], t[1], t[2]))
        return found

    def has_result(self, model: str, step: int, analysis: str) -> bool:
        """Whether a scalars file is there (cheap; `completed` and `results` also check the files)."""
        return self.storage.exists(self._scalars_key(model, step, analysis))

    def results(self, model: str | None = None, analyses=None, *, deep: bool = False) -> list[ResultInfo]:
        """Every stored result (of `model`, of `analyses`) with its provenance and, if damaged, what is wrong.

        Reads each result's Parquet footers: a truncated or corrupt file, a row count other than the one
        written, or a missing arrays file is a problem. `deep=True` also reads every file whole, which
        catches damage inside a file whose footer survived.
        """
        models = None if model is None else [model]
        found = self._result_files(models, None if analyses is None else _as_list(analyses))
        return [self._inspect(m, analysis, step, folder, deep) for m, analysis, step, folder in found]

    def _inspect(self, model: str, analysis: str, step: int, folder: str, deep: bool) -> ResultInfo:
        scalars_key = f"{folder}/step{step}.scalars.parquet"
        arrays_key = f"{folder}/step{step}.arrays.parquet"
        try:
            metadata = _read_metadata(self.storage, scalars_key)
            footer = json.loads((metadata.metadata or {}).get(RESULT_METADATA_KEY, b"null"))
            if deep:
                _load(self.storage, scalars_key, SCALARS_SCHEMA)
        except FileNotFoundError:
            return ResultInfo(model, step, analysis, None, "the scalars file disappeared while being read")
        except Exception as e:  # truncated, corrupt or foreign
            return ResultInfo(model, step, analysis, None, f"unreadable scalars file ({type(e).__name__}: {e})")
        if footer is None:  # written before footers were recorded: only what the files themselves say
            footer = {"scalars_rows": metadata.num_rows, "arrays_rows": None, "provenance": None}
        problem = None
        if metadata.num_rows != footer["scalars_rows"]:
            problem = f"the scalars file holds {metadata.num_rows} rows, {footer['scalars_rows']} were written"
        elif footer["arrays_rows"] or (footer["arrays_rows"] is None and self.storage.exists(arrays_key)):
            problem = _arrays_problem(self.storage, arrays_key, footer["arrays_rows"], deep)
        return ResultInfo(model, step, analysis, footer["provenance"], problem)

    def completed(self, model: str) -> set[tuple[int, str]]:
        """(step, analysis) pairs with a complete, undamaged result for `model` (see `results`)."""
        done = set()
        for info in self.results(model):
            if info.problem is None:
                done.add((info.step, info.analysis))
            else:
                log.warning("%s step %d %s is damaged (%s); it counts as missing", model, info.step, info.analysis, info.problem)
        return done

    def models(self) -> list[str]:
        """Models with at least one complete result."""
        return sorted({model for model, _, _, _ in self._result_files()})

    def analyses(self, model: str | None = None) -> list[str]:
        """Analyses with at least one complete result (for `model`, or for any model)."""
        models = None if model is None else [model]
        return sorted({analysis for _, analysis, _, _ in self._result_files(models=models)})

    def steps(self, model: str, analysis: str | None = None) -> list[int]:
        """Steps with a complete result for `model` (for `analysis`, or for any analysis)."""
        analyses = None if analysis is None else [analysis]
        return sorted({step for _, _, step, _ in self._result_files(models=[model], analyses=analyses)})

    # ---- reading tables

    def _read_file(self, key: str, schema: pa.Schema, skip: tuple[str, ...] = ()) -> pa.Table | None:
        try:
            return _load(self.storage, key, schema, skip)
        except FileNotFoundError:
            return None  # rewritten or removed since the listing; the next read sees the new one
        except Exception as e:  # truncated, corrupt or foreign files: one bad file must not hide the rest
            log.warning("skipping unreadable result file %s/%s (%s: %s)", self.location, key, type(e).__name__, e)
            return None

    def _read(
        self, kind: str, schema: pa.Schema, filters: dict[str, Any], sort_by: list[str], skip: tuple[str, ...] = ()
    ) -> pd.DataFrame:
        lists = {k: _as_list(v) for k, v in filters.items()}
        tables = []
        results = self._result_files(lists.pop("model"), lists.pop("analysis"), lists.pop("steps"))
        for _, _, step, folder in results:
            table = self._read_file(f"{folder}/step{step}.{kind}.parquet", schema, skip)
            if table is None:
                continue
            for column, wanted in lists.items():  # file by file: only the wanted rows are ever held together
                if wanted is not None:
                    table = table.filter(_mask(table, column, wanted))
            tables.append(table)
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return _to_pandas(table, sort_by)

    def scalars(
        self, model=None, analysis=None, component=None, layer=None, steps=None, stat=None, head=None
    ) -> pd.DataFrame:
        """The scalars table, filtered and sorted.

        Each filter takes a value or a list; a None inside a layer/head list matches null. Only the
        files for the wanted models, analyses and steps are opened.
        """
        filters = dict(
            model=model, analysis=analysis, steps=steps, component=component, layer=layer, head=head, stat=stat
        )
        return self._read("scalars", SCALARS_SCHEMA, filters, list(SCALAR_COLUMNS[:-1]))

    def arrays(
        self, model=None, analysis=None, component=None, layer=None, steps=None, name=None, head=None, *, text=True
    ) -> pd.DataFrame:
        """The arrays table, filtered like `scalars`. Results without arrays contribute no rows.

        `shape`, `values` and `text` hold numpy arrays (or None); `row_to_numpy(row)` reshapes a row.
        `text=False` does not read the text column (every row's `text` is None): for numeric arrays of
        results that also store strings, such as `svd_directions`' token ids next to their tokens.
        """
        filters = dict(
            model=model, analysis=analysis, steps=steps, component=component, layer=layer, head=head, name=name
        )
        skip = () if text else ("text",)
        return self._read("arrays", ARRAYS_SCHEMA, filters, ["model", "analysis", "step", *_ARRAY_KEY], skip)

    def array(
        self,
        model: str,
        step: int,
        analysis: str,
        component: str,
        name: str,
        layer: int | None = None,
        head: int | None = None,
    ) -> np.ndarray:
        """One stored array, reshaped. layer/head None match rows where they do not apply."""
        if not self.has_result(model, step, analysis):
            raise KeyError(f"no complete result for model {model!r}, step {step}, analysis {analysis!r}")
        rows = self.arrays(model=model, analysis=analysis, steps=[step])
        match = rows[
            (rows["component"] == component)
            & (rows["name"] == name)
            & (rows["layer"].isna() if layer is None else rows["layer"] == layer).fillna(False)
            & (rows["head"].isna() if head is None else rows["head"] == head).fillna(False)
        ]
        if match.empty:
            available = rows[_ARRAY_KEY].head(20).to_dict("records")
            raise KeyError(
                f"no array component={component!r} layer={layer!r} head={head!r} name={name!r} in "
                f"{model!r} step {step} {analysis!r}; available (first 20): {available}"
            )
        return row_to_numpy(match.iloc[0])

    def failures(self, model: str | None = None) -> pd.DataFrame:
        """Recorded failures: model, step, analysis, time (UTC), message."""
        slugs = [model_slug(model)] if model is not None else self._folders("failures")
        records = []
        for slug in slugs:
            folder = f"failures/{slug}"
            for name, is_dir in sorted(self.storage.entries(folder)):
                if is_dir or not _FAILURE_FILE.match(name):
                    continue
                try:
                    records.append(json.loads(self.storage.read_bytes(f"{folder}/{name}")))
                except FileNotFoundError:
                    continue  # a successful write just removed it
                except ValueError as e:
                    log.warning("skipping unreadable failure record %s/%s/%s (%s)", self.location, folder, name, e)
        df = pd.DataFrame(records, columns=["model", "step", "analysis", "time", "message"])
        text = pd.StringDtype()
        df = df.astype({"model": text, "step": np.int64, "analysis": text, "message": text})
        df["time"] = pd.to_datetime(df["time"], utc=True)
        return df.sort_values(["model", "step", "analysis"], kind="stable").reset_index(drop=True)

    # ---- integrity

    def verify(self, repair: bool = False) -> list[StoreProblem]:
        """Read every result file whole and report what cannot be trusted.

        - "damaged": a result whose files cannot be read back or do not hold what was written
          (truncated, corrupt, an arrays file missing). `repair=True` deletes each damaged result
          (scalars file first, so it reads as missing) and the next sweep recomputes it.
        - "mixed": one analysis of one model computed in different ways (load options, analysis version,
          reference checkpoints, evaluation batch), e.g. by a pythia_dynamics that did not check. Not
          repaired: sweep again with `--recompute ANALYSIS` to recompute them all one way.
        """
        problems = []
        infos = self.results(deep=True)
        for info in infos:
            if info.problem is None:
                continue
            problems.append(StoreProblem(info.model, info.analysis, (info.step,), "damaged", info.problem))
            if repair:
                self._remove_result(info.model, info.step, info.analysis)
        for (model, analysis), kinds in _provenance_groups(i for i in infos if i.problem is None).items():
            if len(kinds) > 1:
                detail = "; ".join(f"{describe_steps(steps)}: {kind}" for kind, steps in kinds.items())
                all_steps = tuple(sorted(s for steps in kinds.values() for s in steps))
                problems.append(StoreProblem(model, analysis, all_steps, "mixed", detail))
        return problems

    def sql(self, query: str) -> pd.DataFrame:
        """Run SQL with DuckDB over this store's complete results, as the tables `scalars` and `arrays`
        (`pythia_dynamics.share.query`): `store.sql("SELECT step, value FROM scalars WHERE ...")`."""
        from pythia_dynamics.share import query as run_query  # DuckDB only when asked for

        return run_query(self, query)

    def _remove_result(self, model: str, step: int, analysis: str) -> None:
        self.storage.remove(self._scalars_key(model, step, analysis))
        self.storage.remove(self._arrays_key(model, step, analysis))

    def coverage(self) -> pd.DataFrame:
        """What each model's analyses lack: one row per (model, analysis, step) that is not a complete result.

        Columns model, analysis, step, status ("failed", "damaged" or "missing"), detail. A model's steps
        are every step at which any of its analyses has a result or a failure; an analysis is missing at
        the steps where others have something and it has nothing. Empty when nothing is missing. The
        integrity audit's rows (`AUDIT_ANALYSIS`) neither define a model's steps nor are reported here: the
        audit covers the checkpoints it was asked about, swept or not (and left out, with --exclude-suspect).
        """
        infos = [i for i in self.results() if i.analysis != AUDIT_ANALYSIS]
        failures = self.failures()
        rows = []
        for model in sorted({i.model for i in infos} | set(failures["model"])):
            mine = [i for i in infos if i.model == model]
            failed = failures[failures["model"] == model]
            steps = {i.step for i in mine} | set(failed["step"].tolist())
            for analysis in sorted({i.analysis for i in mine} | set(failed["analysis"])):
                status = {i.step: ("damaged", i.problem) for i in mine if i.analysis == analysis and i.problem}
                complete = {i.step for i in mine if i.analysis == analysis and not i.problem}
                for row in failed[failed["analysis"] == analysis].itertuples():
                    if row.step not in complete:
                        status.setdefault(int(row.step), ("failed", str(row.message)))
                for step in sorted(steps - complete):
                    kind, detail = status.get(step, ("missing", ""))
                    rows.append((model, analysis, step, kind, detail))
        return pd.DataFrame(rows, columns=["model", "analysis", "step", "status", "detail"])


def _arrays_problem(storage, key: str, rows_written: int | None, deep: bool) -> str | None:
    try:
        rows = _read_metadata(storage, key).num_rows
        if deep:
            _load(storage, key, ARRAYS_SCHEMA)
    except FileNotFoundError:
        return f"the arrays file is missing ({rows_written} rows were written)"
    except Exception as e:
        return f"unreadable arrays file ({type(e).__name__}: {e})"
    if rows_written is not None and rows != rows_written:
        return f"the arrays file holds {rows} rows, {rows_written} were written"
    return None


def _provenance_groups(infos: Iterable[ResultInfo]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """{(model, analysis): {how it was computed, as text: steps}}, ignoring what varies per checkpoint."""
    groups: dict[tuple[str, str], dict[str, list[int]]] = {}
    for info in infos:
        kind = describe_provenance(info.provenance)
        groups.setdefault((info.model, info.analysis), {}).setdefault(kind, []).append(info.step)
    return groups


# What must be the same for every checkpoint of one analysis of one model, for the results to be comparable.
CONSISTENT_PROVENANCE = ("analysis_version", "load_options", "references", "eval_batch")


def describe_provenance(provenance: dict | None) -> str:
    """The part of a result's provenance that must agree across its analysis's checkpoints, as text."""
    if provenance is None:
        return "unrecorded (written before pythia_dynamics recorded provenance)"
    parts = []
    for key in CONSISTENT_PROVENANCE:
        if key in provenance:
            value = provenance[key]
            text = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
            parts.append(f"{key} {text}")
    return "; ".join(parts) or "nothing recorded"


# ---------------------------------------------------------------------------------------------
# Several stores at once


def _open_all(paths) -> list[Store]:
    if isinstance(paths, (str, os.PathLike, Store)):
        paths = [paths]
    stores = [p if isinstance(p, Store) else Store(p) for p in paths]
    if not stores:
        raise StoreError("no store paths given; pass a list of one or more store folders or URLs")
    return stores


def _concat(frames: list[pd.DataFrame], key: list[str], sort_by: list[str]) -> pd.DataFrame:
    df = pd.concat(frames, ignore_index=True)
    dup = df.duplicated(subset=key)
    if dup.any():
        example = df.loc[dup, ["model", "step", "analysis"]].iloc[0].to_dict()
        log.warning("%d rows appear in more than one store (e.g. %s); keeping all", int(dup.sum()), example)
    return df.sort_values(sort_by, kind="stable").reset_index(drop=True)


def read_scalars(paths, **filters) -> pd.DataFrame:
    """`Store.scalars(**filters)` over several store folders, concatenated."""
    frames = [store.scalars(**filters) for store in _open_all(paths)]
    return _concat(frames, ["model", "step", "analysis", *_SCALAR_KEY], list(SCALAR_COLUMNS[:-1]))


def read_arrays(paths, **filters) -> pd.DataFrame:
    """`Store.arrays(**filters)` over several store folders, concatenated."""
    frames = [store.arrays(**filters) for store in _open_all(paths)]
    sort_by = ["model", "analysis", "step", *_ARRAY_KEY]
    return _concat(frames, ["model", "step", "analysis", *_ARRAY_KEY], sort_by)
