"""What the engine needs to know about Lance datasets: opening, the applied LSN, blob columns.

Kept apart from Table so that the Lance-specific facts (blob columns come back as an
extension type; the applied LSN lives in commit properties or the config) sit in one place.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lance
import pyarrow as pa

from persisting.engine import integrity
from persisting.engine.durable import is_local, local_path
from persisting.errors import ConfigError, CorruptionError, NotFoundError, PersistingError, StorageError

__all__ = [
    "BLOB_METADATA",
    "damage",
    "default_wal_dir",
    "is_panic",
    "lance_errors",
    "is_blob",
    "storage_version",
    "logical_schema",
    "open_dataset",
    "read_blob",
    "variable_width",
]

BLOB_METADATA = {b"lance-encoding:blob": b"true"}


def default_wal_dir(uri: str) -> str:
    """``x.lance`` -> ``x.wal`` beside it (local datasets only)."""
    path = local_path(uri).rstrip("/")
    return (path.removesuffix(".lance")) + ".wal"


def open_dataset(
    uri: str, storage_options: dict[str, str] | None, version: int | str | None = None
) -> lance.LanceDataset | None:
    """The dataset at ``uri`` (at ``version``), or None if none was ever committed there."""
    if is_local(uri) and not os.path.isdir(os.path.join(local_path(uri), "_versions")):
        if version is not None:
            raise NotFoundError(f"table {uri} does not exist, so it has no version {version!r}")
        return None
    try:
        ds = lance.dataset(uri, version=version, storage_options=storage_options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        text = str(exc)
        if isinstance(exc, ValueError) and "not found" in text.lower() and version is None and _never_committed(uri):
            return None
        if version is not None and "not found" in text.lower() and _no_such_version(uri, version):
            raise NotFoundError(f"table {uri} has no version or tag {version!r}: {text}") from exc
        raise damage(uri, "the dataset", exc) from exc
    integrity.check_dataset(uri, ds)
    return ds


def _never_committed(uri: str) -> bool:
    """No manifest was ever recorded (remote datasets: nothing to tell, trust Lance)."""
    if not is_local(uri):
        return True
    recorded = integrity.load(local_path(uri)) or {}
    return not any(integrity.manifest_version(r) is not None for r in recorded)


def _no_such_version(uri: str, version: int | str) -> bool:
    """True when ``version`` names no committed version (rather than a damaged one)."""
    if not is_local(uri) or isinstance(version, str):
        return True
    recorded = integrity.load(local_path(uri)) or {}
    return not any(integrity.manifest_version(r) == version for r in recorded)


def is_panic(exc: BaseException) -> bool:
    """A Rust panic surfaced by pyo3 (``pyo3_runtime.PanicException``, a BaseException)."""
    return type(exc).__name__ == "PanicException"


def damage(uri: str, what: str, exc: BaseException) -> PersistingError:
    """The typed error for a Lance failure while reading ``what``: the damaged file when the
    recorded digests can name it (local datasets), else the table."""
    if not is_local(uri):
        return StorageError(f"cannot read {what} of table {uri}: {exc}", uri=uri)
    root = local_path(uri)
    bad = None
    try:
        recorded = integrity.load(root) or {}
        for rel in sorted(recorded):
            bad = integrity.check_file(root, rel, recorded[rel], cache=False)
            if bad is not None:
                return CorruptionError(
                    f"table {uri}: {bad}; reading {what} failed ({exc}). Restore the file from a backup "
                    "or drop the table", path=os.path.join(root, rel))
    except CorruptionError as rec_exc:
        return rec_exc
    return CorruptionError(
        f"table {uri} is damaged: reading {what} failed ({type(exc).__name__}: {exc}). "
        "Run `persisting verify` on the store to find the file", path=root)


def _bad_filter(filter: str, schema: pa.Schema | None) -> str | None:
    """Why ``filter`` is not a valid SQL predicate over ``schema`` (None if it is): tried on an
    empty in-memory copy, so a caller's typo is told apart from a damaged table."""
    if schema is None:
        return None
    empty = pa.schema([pa.field(f.name, pa.large_binary()) if is_blob(f) else f for f in schema]).empty_table()
    try:
        ds = lance.write_dataset(empty, f"memory://persisting-filter-{time.monotonic_ns()}")
        ds.scanner(filter=filter).to_table()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - any refusal of the empty copy is the filter's fault
        if isinstance(exc, Exception) or is_panic(exc):
            return f"{type(exc).__name__}: {exc}"
        raise
    return None


@contextmanager
def lance_errors(uri: str, what: str, *, filter: str | None = None,
                 schema: pa.Schema | None = None) -> Iterator[None]:
    """Turn whatever Lance raises while reading into a typed error: ConfigError for a malformed
    ``filter``, CorruptionError (naming the file when digests can) for damage, Rust panics
    included; KeyboardInterrupt and SystemExit pass through untouched."""
    try:
        yield
    except (PersistingError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError):
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise
        if filter is not None:
            why = _bad_filter(filter, schema)
            if why is not None:
                raise ConfigError(f"filter {filter!r} on table {uri} is not a valid SQL predicate: {why}",
                                  filter=filter) from exc
        raise damage(uri, what, exc) from exc


def variable_width(t: pa.DataType) -> bool:
    """Types whose values Lance may compress (strings, binaries, lists)."""
    return (
        pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
        or pa.types.is_large_binary(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    )


def storage_version(schema: pa.Schema) -> str:
    """The Lance file format a new dataset of ``schema`` is created with.

    2.2 when it has a blob column: the payload path reads Lance 2.2's blob files directly and
    hashes them while writing. Otherwise 2.1, which writes small fixed-width columns about 2x
    faster here (3 x 1M rows of (int64, int64, float32[4], int64, float64): 24 vs 13 M rows/s,
    same size on disk, the same take/scan speed). A blob column added later to a 2.1 dataset
    is stored inline (Lance's first blob layout) and read through Lance's blob reader."""
    return "2.2" if any(is_blob(f) for f in schema) else "2.1"


def is_blob(f: pa.Field) -> bool:
    """A blob column, as declared by us or as reported back by Lance."""
    if isinstance(f.type, pa.ExtensionType) and f.type.extension_name.startswith("lance.blob"):
        return True
    return bool(f.metadata) and f.metadata.get(b"lance-encoding:blob") == b"true"


def logical_schema(stored: pa.Schema) -> pa.Schema:
    """The schema as users wrote it: Lance reports blob columns as an extension type."""
    fields = [
        pa.field(f.name, pa.large_binary(), nullable=True, metadata=BLOB_METADATA) if is_blob(f) else f
        for f in stored
    ]
    return pa.schema(fields, metadata=stored.metadata)


def read_blob(blob: Any) -> bytes:
    """All bytes of one BlobFile from ``take_blobs``."""
    with blob as f:
        return bytes(f.read())


class GuardedBlob:
    """A Lance BlobFile whose reads raise typed errors (damage, Rust panics) naming the table."""

    def __init__(self, blob: Any, uri: str, column: str, position: int) -> None:
        self._blob = blob
        self._uri = uri
        self._what = f"blob column {column!r} row {position}"

    def _call(self, name: str, *args: Any) -> Any:
        with lance_errors(self._uri, self._what):
            return getattr(self._blob, name)(*args)

    def read(self, *args: Any) -> bytes:
        return self._call("read", *args)

    def readinto(self, buf: Any) -> int:
        return self._call("readinto", buf)

    def readall(self) -> bytes:
        return self._call("readall")

    def seek(self, *args: Any) -> int:
        return self._call("seek", *args)

    def tell(self) -> int:
        return self._call("tell")

    def size(self) -> int:
        return self._call("size")

    def close(self) -> None:
        self._call("close")

    def __enter__(self) -> GuardedBlob:
        with lance_errors(self._uri, self._what):
            self._blob.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._blob.__exit__(*exc)
