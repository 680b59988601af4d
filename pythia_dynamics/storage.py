"""Where a store's files live: a local folder, or an fsspec URL (`s3://bucket/prefix`, `memory://name`, ...).

This is the only module that knows about filesystems. The store names its files by *keys*, paths
relative to the store's root with `/` separators (`results/<model>/<analysis>/step8.scalars.parquet`),
and asks one of two backends to read, list, write and remove them:

- `LocalStorage` (a path, or a `file://` URL): plain `os`/`pathlib` calls, as fast as before, and
  atomic writes by writing a unique temporary in the final folder, flushing it (`fsync`) and
  `os.replace`-ing it over the final name.
- `FsspecStorage` (any other URL): an fsspec filesystem, imported only when such a URL is opened (so
  local stores need neither fsspec nor s3fs). Object storage has no rename, so a file is serialised
  whole in memory and sent in one `pipe_file`: a PUT (or a multipart upload's completion) makes a whole
  object visible at once, never a part of one. The store's own commit order (scalars file last, row
  counts in its footer) does the rest; see docs/url-stores.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["FsspecStorage", "LocalStorage", "is_url", "open_storage"]

# Every reader ignores names ending in this: a local write in progress, or one a killed writer left behind.
TEMPORARY_SUFFIX = ".tmp"


def is_url(location: Any) -> bool:
    """Whether `location` names a store by URL (`PROTOCOL://...`) rather than by a local path."""
    return isinstance(location, str) and "://" in location


def open_storage(location: str | os.PathLike, storage_options: dict | None = None) -> LocalStorage | FsspecStorage:
    """The backend for a store location: a local path or `file://` URL -> LocalStorage, any other URL -> fsspec."""
    if is_url(location):
        protocol, _, rest = location.partition("://")
        if protocol == "file" and not storage_options:
            return LocalStorage(rest)
        return FsspecStorage(location, storage_options)
    if storage_options:
        raise ValueError(f"storage_options apply to URL stores (s3://...), not to the local path {location!r}")
    return LocalStorage(location)


class LocalStorage:
    """A store's files in a local folder (or a mounted shared filesystem)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStorage({self.location!r})"

    def full(self, key: str) -> Path:
        return self.root / key if key else self.root

    def exists(self, key: str) -> bool:
        return self.full(key).exists()

    def read_bytes(self, key: str) -> bytes:
        return self.full(key).read_bytes()

    def entries(self, key: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of what is directly under `key`; [] if there is nothing there."""
        try:
            with os.scandir(self.full(key)) as it:
                return [(entry.name, entry.is_dir()) for entry in it]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def files(self) -> list[str]:
        """Keys of every file of the store, sorted, temporaries left out."""
        found = (p for p in self.root.rglob("*") if p.is_file() and not p.name.endswith(TEMPORARY_SUFFIX))
        return sorted(p.relative_to(self.root).as_posix() for p in found)

    def write_atomic(self, key: str, write: Callable[[BinaryIO], Any], fsync: bool) -> None:
        """Write `key` via a unique temporary name in the same folder, then `os.replace` it into place.

        `write(fileobj)` writes the content. The pid + uuid name keeps concurrent writers (even of the
        same file) from sharing a temporary; the `.tmp` suffix keeps it out of every reader's pattern.
        """
        final = self.full(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                if fsync:
                    # Without it a crash soon after the rename can leave an empty file under the final name.
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def remove(self, key: str) -> None:
        """Delete the file `key`; nothing if it is not there."""
        with contextlib.suppress(FileNotFoundError):
            self.full(key).unlink()

    @contextlib.contextmanager
    def parquet_source(self, key: str, whole: bool) -> Iterator[str]:
        """Something `pyarrow.parquet` opens: here the path itself (pyarrow's own file reader is fastest)."""
        yield str(self.full(key))


class FsspecStorage:
    """A store's files under an fsspec URL. `storage_options` go to the filesystem (credentials, endpoint_url,
    ...); without them fsspec and the backend use their usual configuration (for S3: the AWS environment
    variables, ~/.aws, instance roles)."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError:  # pragma: no cover - fsspec comes with most installs
            raise ImportError(f"a store at a URL ({url}) needs fsspec: pip install 'pythia-dynamics[cloud]'") from None
        # Listings must never be served from a cache: other machines write into the same store.
        options = {"use_listings_cache": False, **(storage_options or {})}
        try:
            self.fs, root = url_to_fs(url, **options)
        except ImportError as e:  # e.g. s3fs missing for s3://
            raise ImportError(f"opening the store {url} needs a filesystem package that is not installed ({e}); "
                              "for S3: pip install 'pythia-dynamics[cloud]'") from None  # fmt: skip
        self.root = root.rstrip("/")
        self.location = url.rstrip("/")
        self.storage_options = dict(storage_options or {})

    def __repr__(self) -> str:
        return f"FsspecStorage({self.location!r})"

    def full(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.full(key))

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self.full(key))

    def entries(self, key: str) -> list[tuple[str, bool]]:
        """(name, is a folder) of what is directly under `key` (a folder is a common prefix); [] if nothing."""
        try:
            listing = self.fs.ls(self.full(key), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = self.full(key).rstrip("/") + "/"
        out = []
        for entry in listing:
            name = entry["name"].rstrip("/")
            if name.startswith(prefix):  # not the entry of `key` itself
                out.append((name.rsplit("/", 1)[-1], entry["type"] == "directory"))
        return out

    def files(self) -> list[str]:
        """Keys of every file of the store, sorted."""
        prefix = self.root + "/"
        names = (name.removeprefix("/") for name in self.fs.find(self.root))
        return sorted(n[len(prefix.lstrip("/")) :] for n in names if n.startswith(prefix.lstrip("/")))

    def write_atomic(self, key: str, write: Callable[[BinaryIO], Any], fsync: bool) -> None:
        """Serialise the whole file in memory, then send it in one `pipe_file`.

        Object stores make an object visible only once it is whole (a PUT, or a multipart upload's
        completion), so there is no temporary and no rename; an exception inside `write` sends nothing.
        `fsync` has no meaning here: the object store acknowledges a write once it is durable.
        """
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        path = self.full(key)
        try:
            self.fs.pipe_file(path, data)
        except FileNotFoundError:  # a filesystem with real folders (not object storage) needs the parent first
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, data)

    def remove(self, key: str) -> None:
        """Delete the file `key`; nothing if it is not there."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.full(key))

    @contextlib.contextmanager
    def parquet_source(self, key: str, whole: bool) -> Iterator[Any]:
        """Something `pyarrow.parquet` opens. `whole`: the file's bytes in one GET (for reading every row);
        otherwise a seekable remote file, so reading a footer fetches only the file's tail."""
        if whole:
            import pyarrow as pa

            yield pa.BufferReader(self.read_bytes(key))
            return
        with self.fs.open(self.full(key), "rb") as f:
            yield f
