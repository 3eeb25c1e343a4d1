"""LanceBackend and PersistingBackend: Pulsing's ``StorageBackend`` protocol on a Table.

Pulsing builds one backend per bucket as ``cls(bucket_id=..., storage_path=..., batch_size=...,
**backend_options)`` and awaits its methods on the bucket actor's event loop. Each backend keeps
its bucket in ``storage_path/bucket_<id>.lance`` (WAL and writer lock in ``bucket_<id>.wal``).
Offsets are positions in that table: stable across restarts, the same for buffered and
committed records.

The protocol has no ``close``: a backend commits its buffer and releases its lock when it is
garbage-collected (Pulsing drops bucket actors when its actor system shuts down), when
:meth:`close` is called, or at interpreter exit.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from prometheus_client import REGISTRY

from persisting.engine.names import check_name
from persisting.errors import ConfigError, InvalidNameError, StorageError
from persisting.queue.bucket import BucketStore
from persisting.queue.options import LanceBackendOptions, PersistingBackendOptions
from persisting.queue.records import check_record, check_records

__all__ = ["LanceBackend", "PersistingBackend"]

_METRICS = (
    "persisting_records_total",
    "persisting_buffer_size",
    "persisting_flush_duration_seconds_count",
    "persisting_flush_duration_seconds_sum",
    "persisting_wal_size_bytes",
    "persisting_bytes_written_total",
    "persisting_bytes_read_total",
)


def _bucket_name(bucket_id: object) -> str:
    if isinstance(bucket_id, bool) or not isinstance(bucket_id, (int, str)):
        raise InvalidNameError(
            f"bucket_id must be an int or str, got {type(bucket_id).__name__}: {bucket_id!r}", name=repr(bucket_id)
        )
    if isinstance(bucket_id, int) and bucket_id < 0:
        raise InvalidNameError(f"bucket_id must be >= 0, got {bucket_id}", name=str(bucket_id))
    if isinstance(bucket_id, str):
        check_name(bucket_id, what="bucket_id")
    return check_name(f"bucket_{bucket_id}", what="bucket_id")


def _storage_dir(storage_path: object) -> str:
    try:
        path = os.fspath(storage_path)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(
            f"storage_path must be a local directory path, got {type(storage_path).__name__}", path=repr(storage_path)
        ) from None
    if not isinstance(path, str) or not path:
        raise ConfigError(f"storage_path must be a non-empty local directory path, got {path!r}", path=repr(path))
    if "://" in path and not path.startswith("file://"):
        raise ConfigError(
            f"storage_path {path} is not local: put buckets on object storage with the backend option "
            "uri='s3://...' (and storage_options); storage_path stays a local directory",
            path=path,
        )
    path = path.removeprefix("file://")
    if os.path.exists(path) and not os.path.isdir(path):
        raise StorageError(
            f"storage_path {path} is a file, not a directory; point storage_path at a directory", path=path
        )
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"storage_path {path} cannot be created: {exc}", path=path) from exc
    return path


def _arrived(bucket: BucketStore, position: int) -> bool:
    return bucket.total > position or bucket.closed


def _check_window(limit: object, offset: object) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0, got {value!r}", argument=name)


class LanceBackend:
    """A Pulsing bucket kept in Lance: records are buffered and committed every
    ``flush_threshold`` records (and on :meth:`flush` and close). No WAL: a record is durable
    once the flush that commits it returns; a crash loses the buffer, never a committed record.
    """

    options_class: ClassVar[type[LanceBackendOptions]] = LanceBackendOptions
    backend: ClassVar[str] = "lance"

    def __init__(self, bucket_id: int, storage_path: str, batch_size: int = 100, **options: Any) -> None:
        name = _bucket_name(bucket_id)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}", argument="batch_size")
        self.options = self.options_class.from_kwargs(options)
        self.bucket_id = bucket_id
        self.storage_path = _storage_dir(storage_path)
        self.batch_size = batch_size
        self._bucket = BucketStore(self.storage_path, name, self.options, enable_metrics=self._metrics_enabled)
        self._finalizer = weakref.finalize(self, self._bucket.close)

    @property
    def _metrics_enabled(self) -> bool:
        return False

    # -- writing -----------------------------------------------------------------------------
    async def put(self, record: dict[str, Any]) -> None:
        """Store one record after every earlier one."""
        self._bucket.append([check_record(record)])

    async def put_batch(self, records: list[dict[str, Any]]) -> None:
        """Store records in order, all or none (a bad record refuses the whole batch)."""
        checked = check_records(records)
        if checked:
            self._bucket.append(checked)

    async def flush(self) -> None:
        """Commit buffered records to Lance; they are durable when this returns."""
        self._bucket.flush()

    # -- reading -----------------------------------------------------------------------------
    async def get(self, limit: int, offset: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records from position ``offset`` (buffered and committed alike)."""
        _check_window(limit, offset)
        return self._bucket.read(offset, limit)

    async def get_stream(
        self, limit: int, offset: int, wait: bool = False, timeout: float | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield lists of at most ``batch_size`` records from ``offset`` until ``limit`` are read.

        With ``wait=False`` the stream ends at the last record stored. With ``wait=True`` it
        waits for new records and wakes when one arrives; ``timeout`` (seconds, None = forever)
        ends the stream when no record arrives for that long, as Pulsing's MemoryBackend does.
        """
        _check_window(limit, offset)
        position, remaining = offset, limit
        bucket = self._bucket
        while remaining > 0:
            rows = bucket.read(position, min(remaining, self.batch_size))
            if rows:
                yield rows
                position += len(rows)
                remaining -= len(rows)
                continue
            if not wait or (timeout is not None and timeout <= 0):
                return
            if not await bucket.arrivals.wait(functools.partial(_arrived, bucket, position), timeout):
                return

    def total_count(self) -> int:
        """Records in the bucket, committed and buffered."""
        return self._bucket.total

    async def stats(self) -> dict[str, Any]:
        return self._stats()

    def _stats(self) -> dict[str, Any]:
        persisted = self._bucket.persisted()
        total = self._bucket.total
        return {
            "bucket_id": self.bucket_id,
            "topic": self.options.topic,
            "backend": self.backend,
            "storage_path": self.storage_path,
            "dataset": self._bucket.path,
            "total_count": total,
            "buffer_count": total - persisted,
            "persisted_count": persisted,
            "flush_threshold": self.options.threshold,
        }

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Commit the buffer and release the bucket; idempotent. Later calls raise ClosedError."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._bucket.closed

    async def __aenter__(self) -> LanceBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bucket_id={self.bucket_id!r}, storage_path={self.storage_path!r})"


class PersistingBackend(LanceBackend):
    """LanceBackend plus a write-ahead log, column compression and Prometheus metrics.

    With ``enable_wal=True`` every record is in the WAL before ``put`` returns (fsynced at once
    with ``wal_sync_interval=0``, else within that many seconds), so a crash or SIGKILL loses
    nothing acknowledged: the next backend on the same ``storage_path`` replays it.
    """

    options_class: ClassVar[type[LanceBackendOptions]] = PersistingBackendOptions
    backend: ClassVar[str] = "persisting"
    options: PersistingBackendOptions

    @property
    def _metrics_enabled(self) -> bool:
        return self.options.enable_metrics

    def _stats(self) -> dict[str, Any]:
        stats = super()._stats()
        table = self._bucket.table_stats()
        stats.update(
            wal_enabled=self.options.wal_enabled,
            wal=self.options.wal,
            durability=table["durability"],
            wal_sync_interval=self.options.wal_sync_interval,
            wal_size=table["wal_size_bytes"],
            compression=self.options.compression,
            column_encoding=self.options.column_compression,
        )
        if self.options.enable_metrics:
            labels = {"store": "queue", "table": self._bucket.label}
            stats["metrics"] = {name: REGISTRY.get_sample_value(name, labels) or 0.0 for name in _METRICS}
        return stats
