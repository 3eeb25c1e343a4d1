"""Table: one Lance dataset, its write-ahead log and an in-memory buffer between them.

Appends go to the WAL (per the durability mode) and the buffer, and are acknowledged with an
LSN. ``flush`` applies the buffer in the order DESIGN.md fixes: (1) one Lance append that
carries ``persisting.lsn`` in its transaction properties, (2) fsync what Lance wrote, (3) drop
WAL segments whose frames are all applied. Opening a writer replays frames above the applied
LSN, so a crash at any point neither loses an acknowledged row nor applies one twice.

One writer per table (an exclusive flock in the WAL directory), any number of read-only opens.
Reads see flushed and buffered rows, in append order.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import lance
import pyarrow as pa

from persisting.engine.batches import decode_batch, encode_batch
from persisting.engine.durable import DirectorySnapshot, is_local, local_path
from persisting.engine.metrics import TableMetrics
from persisting.engine.options import TableOptions
from persisting.engine.schema import conform, evolve, records_to_batch
from persisting.engine.wal import WAL, FRAME_BATCH, ReplayReport, list_segments, read_frames, truncate_torn
from persisting.errors import ClosedError, LockedError, NotFoundError, StorageError, WALError

__all__ = ["Table", "LSN_KEY"]

LSN_KEY = "persisting.lsn"
Rows = pa.RecordBatch | pa.Table | Sequence[Mapping[str, Any]]


def default_wal_dir(uri: str) -> str:
    """``x.lance`` -> ``x.wal`` beside it (local datasets only)."""
    path = local_path(uri).rstrip("/")
    return (path[: -len(".lance")] if path.endswith(".lance") else path) + ".wal"


def _open_dataset(uri: str, storage_options: dict[str, str] | None, version: int | str | None = None) -> lance.LanceDataset | None:
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
    from the dataset config that maintenance (compaction, cleanup) keeps up to date."""
    if ds is None:
        return 0
    best = int(ds.config().get(LSN_KEY, 0) or 0)
    for v in sorted((v["version"] for v in ds.versions()), reverse=True):
        try:
            tx = ds.read_transaction(v)
        except Exception:  # noqa: BLE001 - an old version's transaction may be cleaned up
            break
        props = getattr(tx, "transaction_properties", None) or {}
        if LSN_KEY in props:
            return max(best, int(props[LSN_KEY]))
    return best


class Table:
    """A Lance dataset with a WAL in front; see the module docstring for the guarantees.

    ``uri`` is a local path or an object-store URI (``s3://...`` with ``storage_options``);
    ``wal_dir`` is always local and required for a remote writer. ``schema`` declares types
    and field metadata (e.g. blob columns) up front; other fields are inferred and evolve.
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
        self._closed = False
        self._lock_fd = -1
        self._wal: WAL | None = None
        self._buffer: list[pa.RecordBatch] = []
        self._buffer_rows = 0
        self._buffer_bytes = 0
        self._buffer_cache: pa.Table | None = None
        self._buffer_mem: lance.LanceDataset | None = None
        self.recovery_report = ReplayReport()
        local = is_local(self.uri)
        if wal_dir is None and local:
            wal_dir = default_wal_dir(self.uri)
        self.wal_dir = wal_dir
        if local and os.path.exists(local_path(self.uri)) and not os.path.isdir(local_path(self.uri)):
            raise StorageError(f"table path {local_path(self.uri)} exists and is a file, not a dataset directory")
        if not self.read_only:
            if self.wal_dir is None:
                raise WALError(f"table {self.uri} is remote: pass wal_dir, a local directory for its WAL and lock")
            self._acquire_lock()
        try:
            self._ds = _open_dataset(self.uri, storage_options, version)
            self._declared = schema
            self._schema: pa.Schema | None = logical_schema(self._ds.schema) if self._ds is not None else schema
            if self._schema is not None and schema is not None:
                self._schema = evolve(self._schema, schema).schema
            if self._ds is None and self._schema is not None:
                self._schema = self._with_compression(self._schema, tuple(self._schema.names))
            self._load_state()
            if version is None:
                self._recover()
                if self.read_only:
                    self._settle_reader(version)
        except BaseException:
            self._release_lock()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _load_state(self) -> None:
        self._flushed_rows = self._ds.count_rows() if self._ds is not None else 0
        self._applied = applied_lsn(self._ds)
        self._next_lsn = self._applied + 1

    def _settle_reader(self, version: int | str | None) -> None:
        """A live writer may commit and drop WAL segments while a reader replays them; if the
        dataset moved on meanwhile, read again so the reader sees one consistent state."""
        for _ in range(5):
            latest = _open_dataset(self.uri, self.storage_options, version)
            if latest is None or (self._ds is not None and latest.version == self._ds.version):
                return
            self._ds = latest
            self._schema = logical_schema(latest.schema)
            self._buffer, self._buffer_rows, self._buffer_bytes = [], 0, 0
            self._buffer_cache = self._buffer_mem = None
            self.recovery_report = ReplayReport()
            self._load_state()
            self._recover()

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
        """Replay WAL frames above the applied LSN into the buffer; a writer then commits them."""
        has_wal = self.wal_dir is not None and os.path.isdir(self.wal_dir) and list_segments(self.wal_dir)
        report = self.recovery_report
        if has_wal:
            assert self.wal_dir is not None
            for frame in read_frames(self.wal_dir, after_lsn=self._applied, mode=self.options.recovery, report=report):
                if frame.type == FRAME_BATCH:
                    where = f"{self.wal_dir} frame lsn {frame.lsn}"
                    self._buffer_batch(decode_batch(frame.payload, where=where))
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
        if self._buffer:
            self.flush()
        elif has_wal and self._wal is None:
            self._drop_old_segments()
        self._update_wal_metric()

    def _drop_old_segments(self) -> None:
        assert self.wal_dir is not None
        for _, path in list_segments(self.wal_dir):
            os.unlink(path)

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

    def _buffer_batch(self, batch: pa.RecordBatch) -> None:
        evolution = evolve(self._schema, batch.schema)
        self._schema = self._with_compression(evolution.schema, evolution.added)
        self._buffer.append(batch)
        self._buffer_rows += batch.num_rows
        self._buffer_bytes += batch.nbytes
        self._buffer_cache = self._buffer_mem = None

    def _with_compression(self, schema: pa.Schema, names: tuple[str, ...]) -> pa.Schema:
        """Give new variable-width fields the table's column compression, unless declared."""
        codec = (self.options.column_compression or "none").encode()
        for name in names:
            i = schema.get_field_index(name)
            f = schema.field(i)
            meta = dict(f.metadata or {})
            if b"lance-encoding:compression" in meta or b"lance-encoding:blob" in meta or not _variable_width(f.type):
                continue
            meta[b"lance-encoding:compression"] = codec
            schema = schema.set(i, f.with_metadata(meta))
        return schema

    def append(self, rows: Rows) -> int:
        """Append rows (an Arrow batch/table or a list of dicts); return the append's LSN.

        Invalid rows raise before anything is logged or buffered. With durability ``always``
        the rows are on disk when this returns; with ``batch``, within ``wal_sync_interval``.
        """
        with self._lock:
            self._check_writable()
            batch = self._to_batch(rows)
            evolve(self._schema, batch.schema)  # raises SchemaError before anything is written
            if batch.num_rows == 0:
                return self._next_lsn - 1
            if self._wal is not None:
                lsn = self._wal.append(encode_batch(batch))
            else:
                lsn = self._next_lsn
            self._next_lsn = lsn + 1
            self._buffer_batch(batch)
            self.metrics.records.inc(batch.num_rows)
            self.metrics.buffer.set(self._buffer_rows)
            if self._buffer_rows >= self.options.flush_rows or self._buffer_bytes >= self.options.flush_bytes:
                self.flush()
            else:
                self._update_wal_metric()
            return lsn

    def _buffered_table(self) -> pa.Table:
        if self._buffer_cache is None:
            assert self._schema is not None or not self._buffer
            if not self._buffer:
                return pa.table({}) if self._schema is None else self._schema.empty_table()
            self._buffer_cache = pa.concat_tables([conform(b, self._schema) for b in self._buffer])
        return self._buffer_cache

    def flush(self) -> int:
        """Commit the buffer to Lance durably and drop the WAL it covered; return applied LSN."""
        with self._lock:
            self._check_writable()
            if not self._buffer:
                return self._applied
            start = time.perf_counter()
            last_lsn = self._next_lsn - 1
            data = self._buffered_table()
            self._prepare_schema()
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
            props = {LSN_KEY: str(last_lsn)}
            try:
                if self._ds is None:
                    self._ds = lance.write_dataset(
                        data, self.uri, schema=self._schema, mode="create", data_storage_version="2.2",
                        storage_options=self.storage_options, transaction_properties=props,
                    )
                else:
                    self._ds = lance.write_dataset(
                        data, self._ds, mode="append", storage_options=self.storage_options,
                        transaction_properties=props,
                    )
            except (OSError, ValueError, RuntimeError) as exc:
                raise StorageError(f"cannot commit {data.num_rows} rows to {self.uri}: {exc}") from exc
            _kill_point("after_commit")
            if snapshot is not None:
                snapshot.fsync_new_files()
            _kill_point("after_fsync")
            self._applied = last_lsn
            self._flushed_rows += data.num_rows
            if self._wal is not None:
                self._wal.drop_through(last_lsn)
            self.metrics.bytes_written.inc(data.nbytes)
            self._buffer, self._buffer_rows, self._buffer_bytes = [], 0, 0
            self._buffer_cache = self._buffer_mem = None
            self.metrics.buffer.set(0)
            self.metrics.flush.observe(time.perf_counter() - start)
            self._update_wal_metric()
            self._maybe_compact()
            return last_lsn

    def _prepare_schema(self) -> None:
        """Bring the stored schema up to the buffer's: add new columns, widen types."""
        if self._ds is None or self._schema is None:
            return
        stored = logical_schema(self._ds.schema)
        snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
        new = [f for f in self._schema if f.name not in stored.names]
        widened = [f for f in self._schema if f.name in stored.names and stored.field(f.name).type != f.type]
        for f in widened:
            try:
                self._ds.alter_columns({"path": f.name, "data_type": f.type})
            except (OSError, ValueError):
                self._rewrite_with(self._schema)
                break
        if new:
            self._ds.add_columns(new)
        if snapshot is not None and (new or widened):
            snapshot.fsync_new_files()

    def _rewrite_with(self, schema: pa.Schema) -> None:
        """Rewrite every stored row with widened column types Lance cannot cast in place."""
        assert self._ds is not None
        stored = pa.schema([schema.field(n) for n in self._ds.schema.names])  # logical types
        rows = conform(self._ds.scanner(blob_handling="all_binary").to_table(), stored)
        self._ds = lance.write_dataset(
            rows, self._ds, mode="overwrite", schema=stored, storage_options=self.storage_options,
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
    def _record_applied_lsn(self) -> None:
        """Keep the applied LSN in the dataset config: maintenance commits carry none."""
        assert self._ds is not None
        if int(self._ds.config().get(LSN_KEY, 0) or 0) != self._applied:
            self._ds.update_config({LSN_KEY: str(self._applied)})

    def _maybe_compact(self) -> None:
        limit = self.options.compact_fragments
        if limit and self._ds is not None and len(self._ds.get_fragments()) >= limit:
            self.compact()

    def compact(self) -> dict[str, int]:
        """Merge small fragments (and materialise deletions); keeps the applied LSN."""
        with self._lock:
            self._check_writable()
            self.flush()
            if self._ds is None:
                return {"fragments_removed": 0, "fragments_added": 0}
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
            self._record_applied_lsn()
            m = self._ds.optimize.compact_files(materialize_deletions_threshold=0.0)
            self._ds = lance.dataset(self.uri, storage_options=self.storage_options)
            if snapshot is not None:
                snapshot.fsync_new_files()
            return {"fragments_removed": m.fragments_removed, "fragments_added": m.fragments_added}

    def cleanup(self, *, older_than: timedelta | None = None, retain_versions: int | None = None) -> int:
        """Delete old versions' files (tagged versions stay); return the bytes removed."""
        with self._lock:
            self._check_writable()
            if self._ds is None:
                return 0
            self._record_applied_lsn()
            stats = self._ds.cleanup_old_versions(
                older_than=older_than if older_than is not None else timedelta(0),
                retain_versions=retain_versions,
                error_if_tagged_old_versions=False,
            )
            return int(stats.bytes_removed)

    def delete(self, predicate: str) -> None:
        """Delete rows matching a SQL predicate (flushes first)."""
        with self._lock:
            self._check_writable()
            self.flush()
            if self._ds is None:
                return
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
            self._record_applied_lsn()
            self._ds.delete(predicate)
            if snapshot is not None:
                snapshot.fsync_new_files()
            self._flushed_rows = self._ds.count_rows()

    # -- reading -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"table {self.uri} is closed; open it again to use it")

    @property
    def schema(self) -> pa.Schema | None:
        return self._schema

    def count(self, filter: str | None = None) -> int:
        """Rows in the table, flushed and buffered (matching ``filter`` if given)."""
        with self._lock:
            self._check_open()
            if filter is None:
                return self._flushed_rows + self._buffer_rows
            n = self._ds.count_rows(filter=filter) if self._ds is not None else 0
            if self._buffer:
                n += self._buffer_dataset().count_rows(filter=filter)
            return n

    def __len__(self) -> int:
        return self.count()

    def scan(
        self,
        *,
        columns: list[str] | None = None,
        filter: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> pa.Table:
        """Rows in append order, flushed then buffered; ``filter`` is a SQL predicate."""
        with self._lock:
            self._check_open()
            if self._schema is None:
                return pa.table({})
            schema = self._schema if columns is None else pa.schema([self._schema.field(c) for c in columns])
            if filter is None:
                return self._scan_positional(schema, columns, limit, offset)
            parts = []
            if self._ds is not None:
                parts.append(self._lance_scan(self._ds, columns, filter))
            if self._buffer:
                parts.append(self._lance_scan(self._buffer_dataset(), columns, filter, schema=self._schema))
            out = pa.concat_tables([conform(p, schema) for p in parts]) if parts else schema.empty_table()
            return out.slice(offset, limit) if (offset or limit is not None) else out

    def _lance_scan(
        self, ds: lance.LanceDataset, columns: list[str] | None, filter: str | None,
        limit: int | None = None, offset: int | None = None, schema: pa.Schema | None = None,
    ) -> pa.Table:
        cols = [c for c in (columns if columns is not None else (schema or self._schema).names) if c in ds.schema.names]
        return ds.scanner(
            columns=cols, filter=filter, limit=limit, offset=offset, scan_in_order=True,
            blob_handling="all_binary", with_row_id=False,
        ).to_table()

    def _buffer_dataset(self) -> lance.LanceDataset:
        """The buffered rows as an in-memory Lance dataset, so SQL filters apply to them too."""
        if self._buffer_mem is None:
            self._buffer_mem = lance.write_dataset(
                self._buffered_table(), f"memory://persisting-buffer-{id(self)}-{time.monotonic_ns()}"
            )
        return self._buffer_mem

    def _scan_positional(self, schema: pa.Schema, columns: list[str] | None, limit: int | None, offset: int) -> pa.Table:
        parts = []
        end = None if limit is None else offset + limit
        if self._ds is not None and offset < self._flushed_rows and (end is None or end > 0):
            n = None if end is None else min(end, self._flushed_rows) - offset
            parts.append(self._lance_scan(self._ds, columns, None, limit=n, offset=offset or None))
        if self._buffer:
            b_start = max(0, offset - self._flushed_rows)
            b_end = None if end is None else max(0, end - self._flushed_rows)
            if b_end is None or b_end > b_start:
                buf = self._buffered_table()
                if columns is not None:
                    buf = buf.select(columns)
                parts.append(buf.slice(b_start, None if b_end is None else b_end - b_start))
        return pa.concat_tables([conform(p, schema) for p in parts]) if parts else schema.empty_table()

    def take(self, positions: Sequence[int], *, columns: list[str] | None = None) -> pa.Table:
        """Rows by position (0 = first row ever appended), flushed or buffered."""
        with self._lock:
            self._check_open()
            total = self._flushed_rows + self._buffer_rows
            for p in positions:
                if not 0 <= p < total:
                    raise NotFoundError(f"table {self.uri} has {total} rows; position {p} is out of range")
            if self._schema is None:
                return pa.table({})
            schema = self._schema if columns is None else pa.schema([self._schema.field(c) for c in columns])
            flushed = [p for p in positions if p < self._flushed_rows]
            buffered = [p - self._flushed_rows for p in positions if p >= self._flushed_rows]
            parts = []
            if flushed:
                assert self._ds is not None
                cols = [c for c in schema.names if c in self._ds.schema.names]
                parts.append(conform(self._take_flushed(flushed, cols), schema))
            if buffered:
                buf = self._buffered_table().select(schema.names)
                parts.append(buf.take(pa.array(buffered, pa.int64())))
            out = pa.concat_tables(parts)
            if flushed and buffered and any(a > b for a, b in zip(positions, positions[1:])):
                order = sorted(range(len(positions)), key=lambda i: positions[i] >= self._flushed_rows)
                inverse = [0] * len(order)
                for dst, src in enumerate(order):
                    inverse[src] = dst
                out = out.take(pa.array(inverse, pa.int64()))
            return out

    def _take_flushed(self, positions: list[int], cols: list[str]) -> pa.Table:
        """Take rows from Lance; blob columns come through ``take_blobs`` as bytes."""
        assert self._ds is not None
        blob_cols = {c for c in cols if _is_blob(self._ds.schema.field(c))}
        plain = [c for c in cols if c not in blob_cols]
        taken = self._ds.take(positions, columns=plain) if plain else None
        arrays, fields = [], []
        for c in cols:
            if c in blob_cols:
                blobs = self._ds.take_blobs(c, indices=positions)
                values = [None if b is None else _read_blob(b) for b in blobs]
                arrays.append(pa.array(values, pa.large_binary()))
                fields.append(pa.field(c, pa.large_binary(), metadata=BLOB_METADATA))
            else:
                assert taken is not None
                arrays.append(taken.column(c))
                fields.append(taken.schema.field(c))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def read_blobs(self, column: str, positions: Sequence[int]) -> list[bytes | None]:
        """Bytes of a blob column for the rows at ``positions``."""
        table = self.take(positions, columns=[column])
        return table.column(column).to_pylist()

    def iter_batches(self, *, columns: list[str] | None = None, filter: str | None = None, batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
        """Stream the table in batches, flushed rows first, without loading it all at once."""
        with self._lock:
            self._check_open()
            ds, buf, schema = self._ds, self._buffered_table() if self._buffer else None, self._schema
        if schema is None:
            return
        target = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        if ds is not None:
            cols = [c for c in target.names if c in ds.schema.names]
            for b in ds.scanner(columns=cols, filter=filter, batch_size=batch_rows, scan_in_order=True,
                                blob_handling="all_binary").to_batches():
                yield from conform(b, target).to_batches()
        if buf is not None:
            if filter is not None:
                with self._lock:
                    buf = self._buffer_dataset().to_table(filter=filter) if self._buffer else None
                if buf is None:
                    return
            yield from conform(buf, target).to_batches(max_chunksize=batch_rows)

    # -- versions ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Current Lance version (0 before the first commit)."""
        return self._ds.version if self._ds is not None else 0

    @property
    def applied_lsn(self) -> int:
        """Highest LSN committed to Lance."""
        return self._applied

    @property
    def last_lsn(self) -> int:
        """Highest LSN acknowledged by :meth:`append`."""
        return self._next_lsn - 1

    def versions(self) -> list[dict[str, Any]]:
        """Lance versions: ``version``, ``timestamp``, ``metadata``."""
        with self._lock:
            self._check_open()
            return [] if self._ds is None else list(self._ds.versions())

    def tag(self, name: str, version: int | None = None) -> None:
        """Name a version (the current one by default) so cleanup keeps it."""
        from persisting.engine.names import check_name

        check_name(name, what="tag")
        with self._lock:
            self._check_writable()
            self.flush()
            if self._ds is None:
                raise NotFoundError(f"table {self.uri} has no versions yet; append and flush first")
            self._ds.tags.create(name, version if version is not None else self._ds.version)

    def tags(self) -> dict[str, int]:
        """Tag name -> version."""
        with self._lock:
            self._check_open()
            return {} if self._ds is None else {k: v["version"] for k, v in self._ds.tags.list().items()}

    def delete_tag(self, name: str) -> None:
        with self._lock:
            self._check_writable()
            if name not in self.tags():
                raise NotFoundError(f"table {self.uri} has no tag {name!r}", tag=name)
            assert self._ds is not None
            self._ds.tags.delete(name)

    def checkout(self, version: int | str) -> Table:
        """A read-only Table of an old version (a number or a tag)."""
        self._check_open()
        return Table(self.uri, version=version, storage_options=self.storage_options, name=self.name)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uri": self.uri,
                "rows": self._flushed_rows + self._buffer_rows,
                "flushed_rows": self._flushed_rows,
                "buffered_rows": self._buffer_rows,
                "version": self.version,
                "applied_lsn": self._applied,
                "last_lsn": self._next_lsn - 1,
                "wal_size_bytes": self._wal.size_bytes if self._wal is not None else 0,
                "fragments": len(self._ds.get_fragments()) if self._ds is not None else 0,
                "durability": self.options.durability,
                "read_only": self.read_only,
            }

    # -- closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Flush, sync and release the writer lock; idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self.read_only:
                    self.flush()
            finally:
                self._closed = True
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
        return f"Table({self.uri!r}, {mode}, rows={self._flushed_rows + self._buffer_rows})"


_KILL_POINT = os.environ.get("PERSISTING_KILL_POINT")


def _kill_point(name: str) -> None:
    """Crash-test seam: SIGKILL this process at a named point of the apply order when the
    environment variable PERSISTING_KILL_POINT names it (never set outside tests)."""
    if _KILL_POINT == name:
        os.kill(os.getpid(), signal.SIGKILL)


BLOB_METADATA = {b"lance-encoding:blob": b"true"}


def _variable_width(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
        or pa.types.is_large_binary(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    )


def _is_blob(f: pa.Field) -> bool:
    if isinstance(f.type, pa.ExtensionType) and f.type.extension_name.startswith("lance.blob"):
        return True
    return bool(f.metadata) and f.metadata.get(b"lance-encoding:blob") == b"true"


def logical_schema(stored: pa.Schema) -> pa.Schema:
    """The schema as users wrote it: Lance reports blob columns as an extension type."""
    fields = [
        pa.field(f.name, pa.large_binary(), nullable=True, metadata=BLOB_METADATA) if _is_blob(f) else f
        for f in stored
    ]
    return pa.schema(fields, metadata=stored.metadata)


def _read_blob(blob: Any) -> bytes:
    with blob as f:
        return f.read()
