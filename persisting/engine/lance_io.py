"""What the engine needs to know about Lance datasets: opening, the applied LSN, blob columns.

Kept apart from Table so that the Lance-specific facts (blob columns come back as an
extension type; the applied LSN lives in commit properties or the config) sit in one place.
"""

from __future__ import annotations

import os
from typing import Any

import lance
import pyarrow as pa

from persisting.engine.durable import is_local, local_path
from persisting.errors import NotFoundError, StorageError

__all__ = [
    "BLOB_METADATA",
    "LSN_KEY",
    "applied_lsn",
    "default_wal_dir",
    "is_blob",
    "logical_schema",
    "open_dataset",
    "read_blob",
    "variable_width",
]

LSN_KEY = "persisting.lsn"
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
        return lance.dataset(uri, version=version, storage_options=storage_options)
    except ValueError as exc:
        text = str(exc)
        if "not found" in text.lower() and version is None:
            return None
        if version is not None:
            raise NotFoundError(f"table {uri} has no version or tag {version!r}: {text}") from exc
        raise StorageError(f"cannot open Lance dataset {uri}: {text}") from exc
    except OSError as exc:
        raise StorageError(f"cannot open Lance dataset {uri}: {exc}") from exc


def applied_lsn(ds: lance.LanceDataset | None) -> int:
    """The highest WAL LSN applied to ``ds``: from the newest commit that recorded one, or
    from the dataset config that maintenance (compaction, cleanup) keeps up to date.

    Walks back from the newest version one transaction at a time (listing every version
    first costs seconds once thousands accumulate) and stops at the first commit that carries
    the LSN, or at the config update that recorded it: nothing older can hold a higher one.
    """
    if ds is None:
        return 0
    best = int(ds.config().get(LSN_KEY, 0) or 0)
    for v in range(ds.version, 0, -1):
        try:
            tx = ds.read_transaction(v)
        except Exception:  # noqa: BLE001 - an old version's transaction may be cleaned up
            break
        props = getattr(tx, "transaction_properties", None) or {}
        if LSN_KEY in props:
            return max(best, int(props[LSN_KEY]))
        updates = getattr(getattr(getattr(tx, "operation", None), "config_updates", None), "updates", None)
        if updates and LSN_KEY in updates:
            return best
    return best


def variable_width(t: pa.DataType) -> bool:
    """Types whose values Lance may compress (strings, binaries, lists)."""
    return (
        pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
        or pa.types.is_large_binary(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    )


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
