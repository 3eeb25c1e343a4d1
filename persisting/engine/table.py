"""Table: one Lance dataset, its write-ahead log and the acknowledged rows between them.

Appends go to the WAL (per the durability mode) and a buffer, and are acknowledged with an LSN.
A commit applies buffered rows in the order DESIGN.md fixes: (1) one Lance append that carries
``persisting.lsn`` in its transaction properties, (2) fsync what Lance wrote, (3) drop WAL
segments whose frames are all applied. Opening a writer replays frames above the applied LSN,
so a crash at any point neither loses an acknowledged row nor applies one twice.

When the buffer fills, a background thread commits it while appends go on into a fresh buffer
(``background_flush``); ``flush()`` commits everything acknowledged so far before returning.
One writer per table (an exclusive flock in the WAL directory), any number of read-only opens.
Reads see committed, in-flight and buffered rows, in append order.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeAlias

import lance
import pyarrow as pa

from persisting.engine.batches import decode_batch, encode_batch
from persisting.engine import integrity
from persisting.engine.durable import DirectorySnapshot, is_local, local_path
from persisting.engine.lance_io import (
    LSN_KEY,
    applied_lsn,
    default_wal_dir,
    logical_schema,
    open_dataset,
    variable_width,
)
from persisting.engine.metrics import TableMetrics
from persisting.engine.options import TableOptions
from persisting.engine.pending import Pending
from persisting.engine.reads import TableReads
from persisting.engine.schema import conform, evolve, records_to_batch, screen_replayed
from persisting.engine.wal import FRAME_BATCH, WAL, ReplayReport, list_segments, read_frames, truncate_torn
from persisting.errors import ClosedError, CorruptionError, LockedError, NotFoundError, StorageError, WALError

__all__ = ["LSN_KEY", "Table", "applied_lsn"]

Rows: TypeAlias = "pa.RecordBatch | pa.Table | Sequence[Mapping[str, Any]]"
_BACKPRESSURE = 4  # appends wait once the buffer holds this many flush_rows/flush_bytes


class Table(TableReads):
    """A Lance dataset with a WAL in front; see the module docstring for the guarantees.

    ``uri`` is a local path or an object-store URI (``s3://...`` with ``storage_options``);
    ``wal_dir`` is always local and required for a remote writer. ``schema`` declares types
    and field metadata (e.g. blob columns) up front; other fields are inferred and evolve.
    ``version`` (a number or tag) opens that old version read-only.
    """

    def __init__(
        self,
        uri: str,
        *,
        options: TableOptions | None = None,
        wal_dir: str | None = None,
        schema: pa.Schema | None = None,
        storage_options: dict[str, str] | None = None,
        read_only: bool = False,
        version: int | str | None = None,
        store: str = "table",
        name: str | None = None,
    ) -> None:
        self.uri = str(uri)
        self.options = options or TableOptions()
        self.storage_options = storage_options
        self.read_only = read_only or version is not None
        self.name = name or os.path.basename(self.uri.rstrip("/")).removesuffix(".lance")
        self.metrics = TableMetrics(store, self.name)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._commit_lock = threading.Lock()
        self._closed = False
        self._lock_fd = -1
        self._wal: WAL | None = None
        self._pending = Pending()
        self._flush_error: BaseException | None = None
        self._flusher: threading.Thread | None = None
        self._merged: pa.Schema | None = None  # the last batch schema merged into _schema
        self.recovery_report = ReplayReport()
        local = is_local(self.uri)
        self.wal_dir = default_wal_dir(self.uri) if wal_dir is None and local else wal_dir
        if local and os.path.exists(local_path(self.uri)) and not os.path.isdir(local_path(self.uri)):
            raise StorageError(f"table path {local_path(self.uri)} exists and is a file, not a dataset directory")
        if not self.read_only:
            if self.wal_dir is None:
                raise WALError(f"table {self.uri} is remote: pass wal_dir, a local directory for its WAL and lock")
            self._acquire_lock()
        try:
            self._ds = open_dataset(self.uri, storage_options, version)
            self._declared = schema
            self._version = version
            self._load_state()
            if version is None:
                self._open_reader() if self.read_only else self._recover()
        except BaseException:
            self._release_lock()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _load_state(self) -> None:
        self._merged = None
        self._schema: pa.Schema | None = logical_schema(self._ds.schema) if self._ds is not None else None
        if self._declared is not None:
            self._schema = evolve(self._schema, self._declared).schema
        if self._ds is None and self._schema is not None:
            self._schema = self._with_compression(self._schema, tuple(self._schema.names))
        self._flushed_rows = self._ds.count_rows() if self._ds is not None else 0
        self._applied = applied_lsn(self._ds)
        self._next_lsn = self._applied + 1

    def _open_reader(self) -> None:
        """Replay the WAL for a reader. A live writer may commit and drop segments meanwhile
        (a reader can then see a gap or a vanished file); if the dataset moved on, read again
        so the reader sees one consistent state."""
        for attempt in range(5):
            try:
                self._recover()
            except CorruptionError:
                if attempt == 4 or not self._reload_if_moved():
                    raise
                continue
            if not self._reload_if_moved():
                return

    def _reload_if_moved(self) -> bool:
        latest = open_dataset(self.uri, self.storage_options)
        if latest is None or (self._ds is not None and latest.version == self._ds.version):
            return False
        self._ds = latest
        self._pending = Pending()
        self.recovery_report = ReplayReport()
        self._load_state()
        return True

    def _acquire_lock(self) -> None:
        assert self.wal_dir is not None
        try:
            os.makedirs(self.wal_dir, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StorageError(f"WAL directory {self.wal_dir} cannot be created: {exc}") from exc
        path = os.path.join(self.wal_dir, "LOCK")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(
                f"table {self.uri} is already open for writing (lock {path} is held); "
                "close the other writer or open with read_only=True",
                path=path,
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _recover(self) -> None:
        """Replay WAL frames above the applied LSN; a writer then commits them."""
        segments = self.wal_dir is not None and os.path.isdir(self.wal_dir) and list_segments(self.wal_dir)
        report = self.recovery_report
        if segments:
            assert self.wal_dir is not None
            for frame in read_frames(self.wal_dir, after_lsn=self._applied, mode=self.options.recovery, report=report):
                if frame.type == FRAME_BATCH:
                    batch = screen_replayed(decode_batch(frame.payload, where=f"{self.wal_dir} frame lsn {frame.lsn}"),
                                            self._schema, mode=self.options.recovery, wal_dir=self.wal_dir,
                                            lsn=frame.lsn, report=report)
                    if batch is not None:
                        self._buffer_batch(batch)
            self._next_lsn = max(self._next_lsn, report.last_lsn + 1)
            if not self.read_only:
                truncate_torn(report)
        if self.read_only:
            return
        assert self.wal_dir is not None
        if self.options.wal_enabled:
            self._wal = WAL(
                self.wal_dir,
                next_lsn=self._next_lsn,
                sync=self.options.wal_sync,
                sync_interval=self.options.wal_sync_interval,
                sync_bytes=self.options.wal_sync_bytes,
                max_segment_size=self.options.max_wal_size,
            )
        if self._pending:
            self.flush()  # commits the replayed rows, then drops the segments they came from
        elif segments:
            # nothing above the applied LSN survived (or salvage gave it up): the old segments
            # hold only applied or lost frames; drop them so the next open starts clean
            if self._wal is not None:
                self._wal.drop_through(self._applied)
            else:
                for _, path in list_segments(self.wal_dir):
                    os.unlink(path)
        self._update_wal_metric()

    # -- writing -----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"table {self.uri} is closed; open it again to use it")
        if self.read_only:
            raise StorageError(f"table {self.uri} is open read-only; open it without read_only to write")

    def _to_batch(self, rows: Rows) -> pa.RecordBatch:
        if isinstance(rows, pa.Table):
            batches = rows.to_batches()
            if not batches:
                return pa.RecordBatch.from_pylist([], schema=rows.schema)
            return batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        if isinstance(rows, pa.RecordBatch):
            return rows
        return records_to_batch(rows, self._schema)

    def _fits(self, schema: pa.Schema) -> bool:
        """True if ``schema`` was merged before: evolution only grows and widens, so a schema
        that fitted once still fits and changes nothing (skips evolve on the hot path)."""
        return self._merged is not None and schema.equals(self._merged, check_metadata=True)

    def _buffer_batch(self, batch: pa.RecordBatch, fits: bool = False) -> None:
        if not fits and not self._fits(batch.schema):
            evolution = evolve(self._schema, batch.schema)
            self._schema = self._with_compression(evolution.schema, evolution.added)
            self._merged = batch.schema
        self._pending.add(batch)

    def _with_compression(self, schema: pa.Schema, names: tuple[str, ...]) -> pa.Schema:
        """Give new variable-width fields the table's column compression, unless declared."""
        codec = (self.options.column_compression or "none").encode()
        for name in names:
            i = schema.get_field_index(name)
            f = schema.field(i)
            meta = dict(f.metadata or {})
            if b"lance-encoding:compression" in meta or b"lance-encoding:blob" in meta or not variable_width(f.type):
                continue
            meta[b"lance-encoding:compression"] = codec
            schema = schema.set(i, f.with_metadata(meta))
        return schema

    def append(self, rows: Rows) -> int:
        """Append rows (an Arrow batch/table or a list of dicts); return the append's LSN.

        Invalid rows raise before anything is logged or buffered. With durability ``always``
        the rows are on disk when this returns; with ``batch``, within ``wal_sync_interval``;
        with ``none``, once a later ``flush()`` returns.
        """
        with self._lock:
            self._check_writable()
            if self._flush_error is not None:
                self.flush()  # retry the failed background commit; raises if it still fails
            batch = self._to_batch(rows)
            fits = self._fits(batch.schema)
            if not fits:
                evolve(self._schema, batch.schema)  # raises SchemaError before anything is written
            if batch.num_rows == 0:
                return self._next_lsn - 1
            lsn = self._wal.append(encode_batch(batch)) if self._wal is not None else self._next_lsn
            self._next_lsn = lsn + 1
            self._buffer_batch(batch, fits)
            self.metrics.records.inc(batch.num_rows)
            self.metrics.buffer.set(self._pending.rows)
            self._update_wal_metric()
            if self._buffer_full(1):
                if self.options.background_flush:
                    self._schedule_commit()
                else:
                    self.flush()
            return lsn

    def _buffer_full(self, times: int) -> bool:
        p, o = self._pending, self.options
        return p.buffer_rows >= times * o.flush_rows or p.buffer_bytes >= times * o.flush_bytes

    def _schedule_commit(self) -> None:
        """Hand the buffer to the background committer; wait only if it falls far behind."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name=f"persisting-flush-{self.name}", daemon=True)
            self._flusher.start()
        while self._pending.inflight and self._buffer_full(_BACKPRESSURE) and self._flush_error is None:
            self._changed.wait()
        if self._flush_error is not None:
            self.flush()
        self._pending.seal(self._next_lsn - 1)
        self._changed.notify_all()

    def _flush_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._pending.inflight or self._flush_error is not None):
                    self._changed.wait()
                if self._closed:
                    return
            try:
                self._commit_inflight()
            except BaseException as exc:  # noqa: BLE001 - reported to the next append or flush
                with self._lock:
                    self._flush_error = exc
                    self._changed.notify_all()

    def flush(self) -> int:
        """Commit every row acknowledged so far to Lance, durably; return the applied LSN."""
        with self._lock:
            self._check_writable()
            target = self._next_lsn - 1
        while True:
            with self._lock:
                if self._applied >= target or not self._pending:
                    self._flush_error = None
                    return self._applied
                self._pending.seal(self._next_lsn - 1)
            try:
                self._commit_inflight()
            except (OSError, ValueError, RuntimeError) as exc:
                with self._lock:
                    self._flush_error = exc
                raise StorageError(f"cannot commit rows to {self.uri}: {exc}") from exc

    def _commit_inflight(self) -> None:
        """Apply the in-flight rows: Lance commit with the LSN, fsync, then drop the WAL."""
        with self._commit_lock:
            with self._lock:
                if not self._pending.inflight:
                    return
                schema = self._schema
                assert schema is not None
                data = self._pending.table(schema).slice(0, self._pending.inflight_rows)
                last_lsn = self._pending.inflight_lsn
                ds = self._ds
            start = time.perf_counter()
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
            props = {LSN_KEY: str(last_lsn)}
            if ds is None:
                ds = lance.write_dataset(
                    data, self.uri, schema=schema, mode="create", data_storage_version="2.2",
                    storage_options=self.storage_options, transaction_properties=props,
                )
            else:
                ds = self._prepare_schema(ds, schema)
                ds = lance.write_dataset(
                    data, ds, mode="append", storage_options=self.storage_options, transaction_properties=props,
                )
            _kill_point("after_commit")
            if snapshot is not None:
                integrity.fsync_and_record(snapshot)
            _kill_point("after_fsync")
            with self._lock:
                self._ds = ds
                self._applied = last_lsn
                self._flushed_rows += data.num_rows
                self._pending.committed()
                if self.options.background_flush and self._buffer_full(1):
                    self._pending.seal(self._next_lsn - 1)  # it filled during this commit
                self.metrics.buffer.set(self._pending.rows)
                self._changed.notify_all()
            if self._wal is not None:
                self._wal.drop_through(last_lsn)
            self.metrics.bytes_written.inc(data.nbytes)
            self.metrics.flush.observe(time.perf_counter() - start)
            self._update_wal_metric()
            limit = self.options.compact_fragments
            if limit and len(ds.get_fragments()) >= limit:
                self._compact_committed()

    def _prepare_schema(self, ds: lance.LanceDataset, schema: pa.Schema) -> lance.LanceDataset:
        """Bring the stored schema up to ``schema``: add new columns, widen types."""
        stored = logical_schema(ds.schema)
        new = [f for f in schema if f.name not in stored.names]
        widened = [f for f in schema if f.name in stored.names and stored.field(f.name).type != f.type]
        if not new and not widened:
            return ds
        snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
        for f in widened:
            try:
                ds.alter_columns({"path": f.name, "data_type": f.type})  # type: ignore[dict-item]
            except (OSError, ValueError):
                ds = self._rewrite_with(ds, schema)  # Lance cannot cast it in place (int -> float)
                break
        if new:
            ds.add_columns(new)
        if snapshot is not None:
            integrity.fsync_and_record(snapshot)
        return ds

    def _rewrite_with(self, ds: lance.LanceDataset, schema: pa.Schema) -> lance.LanceDataset:
        """Rewrite every stored row with widened column types."""
        stored = pa.schema([schema.field(n) for n in ds.schema.names])
        rows = conform(ds.scanner(blob_handling="all_binary").to_table(), stored)
        return lance.write_dataset(
            rows, ds, mode="overwrite", schema=stored, storage_options=self.storage_options,
            transaction_properties={LSN_KEY: str(self._applied)},
        )

    def _update_wal_metric(self) -> None:
        self.metrics.wal_size.set(self._wal.size_bytes if self._wal is not None else 0)

    def sync(self) -> int:
        """Force the WAL to disk now; return the highest LSN known durable."""
        with self._lock:
            self._check_writable()
            if self._wal is None:
                return self._applied
            return max(self._wal.sync(), self._applied)

    # -- maintenance -------------------------------------------------------------------------
    def _record_applied_lsn(self, ds: lance.LanceDataset) -> None:
        """Keep the applied LSN in the dataset config: maintenance commits carry none."""
        if int(ds.config().get(LSN_KEY, 0) or 0) != self._applied:
            ds.update_config({LSN_KEY: str(self._applied)})

    def _maintain(self, action: Any) -> Any:
        """Run a maintenance action on the dataset once everything pending is committed."""
        self.flush()
        with self._commit_lock:
            with self._lock:
                ds = self._ds
            if ds is None:
                return None
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
            self._record_applied_lsn(ds)
            result = action(ds)
            fresh = lance.dataset(self.uri, storage_options=self.storage_options)
            if snapshot is not None:
                integrity.fsync_and_record(snapshot)
            with self._lock:
                self._ds = fresh
                self._flushed_rows = fresh.count_rows()
            return result

    def _compact_committed(self) -> None:
        """Compaction from inside a commit (the commit lock is held)."""
        ds = self._ds
        assert ds is not None
        snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
        self._record_applied_lsn(ds)
        ds.optimize.compact_files(materialize_deletions_threshold=0.0)
        fresh = lance.dataset(self.uri, storage_options=self.storage_options)
        if snapshot is not None:
            integrity.fsync_and_record(snapshot)
        with self._lock:
            self._ds = fresh

    def compact(self) -> dict[str, int]:
        """Merge small fragments (and materialise deletions); keeps the applied LSN."""
        self._check_writable()
        m = self._maintain(lambda ds: ds.optimize.compact_files(materialize_deletions_threshold=0.0))
        if m is None:
            return {"fragments_removed": 0, "fragments_added": 0}
        return {"fragments_removed": m.fragments_removed, "fragments_added": m.fragments_added}

    def cleanup(self, *, older_than: timedelta | None = None, retain_versions: int | None = None) -> int:
        """Delete old versions' files (tagged versions stay); return the bytes removed."""
        self._check_writable()
        stats = self._maintain(
            lambda ds: ds.cleanup_old_versions(
                older_than=older_than if older_than is not None else timedelta(0),
                retain_versions=retain_versions,
                error_if_tagged_old_versions=False,
            )
        )
        return 0 if stats is None else int(stats.bytes_removed)

    def delete(self, predicate: str) -> None:
        """Delete rows matching a SQL predicate (commits pending rows first)."""
        self._check_writable()
        self._maintain(lambda ds: ds.delete(predicate))

    def tag(self, name: str, version: int | None = None) -> None:
        """Name a version (the current one by default) so cleanup keeps it."""
        from persisting.engine.names import check_name

        check_name(name, what="tag")
        self._check_writable()
        self.flush()
        with self._lock:
            if self._ds is None:
                raise NotFoundError(f"table {self.uri} has no versions yet; append and flush first")
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
            self._ds.tags.create(name, version if version is not None else self._ds.version)
            if snapshot is not None:
                integrity.fsync_and_record(snapshot)  # a tag keeps its version from cleanup: make it stick

    def delete_tag(self, name: str) -> None:
        with self._lock:
            self._check_writable()
            if name not in self.tags():
                raise NotFoundError(f"table {self.uri} has no tag {name!r}", tag=name)
            assert self._ds is not None
            self._ds.tags.delete(name)

    def refresh(self) -> None:
        """Read-only tables: see what the writer committed or logged since this one opened."""
        with self._lock:
            self._check_open()
            if not self.read_only:
                return  # a writer always sees its own state
            if self._version is not None:
                return  # a checked-out version never changes
            self._ds = open_dataset(self.uri, self.storage_options)
            self._pending = Pending()
            self.recovery_report = ReplayReport()
            self._load_state()
            self._open_reader()

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Commit what is pending, sync and release the writer lock; idempotent."""
        with self._lock:
            if self._closed:
                return
        try:
            if not self.read_only:
                self.flush()
        finally:
            with self._lock:
                self._closed = True
                self._changed.notify_all()
            if self._flusher is not None:
                self._flusher.join()
                self._flusher = None
            if self._wal is not None:
                self._wal.close()
            self._release_lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Table:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else self.options.durability
        return f"Table({self.uri!r}, {mode}, rows={self._flushed_rows + self._pending.rows})"


_KILL_POINT = os.environ.get("PERSISTING_KILL_POINT")


def _kill_point(name: str) -> None:
    """Crash-test seam: SIGKILL this process at a named point of the apply order when the
    environment variable PERSISTING_KILL_POINT names it (never set outside tests)."""
    if _KILL_POINT == name:
        os.kill(os.getpid(), signal.SIGKILL)
