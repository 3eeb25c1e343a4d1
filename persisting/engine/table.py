"""Table: one Lance dataset, its write-ahead log and the acknowledged rows between them.

Appends go to the WAL (per the durability mode) and a buffer, and are acknowledged with an LSN.
A commit applies buffered rows in the order DESIGN.md fixes: (1) one Lance append that carries
``persisting.lsn`` in its transaction properties, (2) fsync what Lance wrote, (3) drop WAL
segments whose frames are all applied. Opening a writer replays frames above the applied LSN,
so a crash at any point neither loses an acknowledged row nor applies one twice.

When the buffer fills, a background thread commits it while appends go on into a fresh buffer
(``background_flush``); ``flush()`` commits everything acknowledged so far before returning.

Many writers per table, in any number of processes: each writer logs to its own WAL directory
(:mod:`persisting.engine.writers`) and commits through Lance's optimistic concurrency (appends
never conflict; maintenance retries). Each commit carries the writer's id and its last LSN, so
the applied LSN is known per writer; a dead writer's WAL is adopted, committed under its id and
removed by the next writer that opens the table -- exactly once. Reads see this writer's
buffered rows and every writer's committed rows; they check for a newer version before each
read (a cheap manifest check), so another process's rows are visible once its flush returns.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import nullcontext
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeAlias

import lance
import pyarrow as pa

from persisting.engine.batches import KnownSchemas, decode_batch, encode_batch, serialized_schema
from persisting.engine import indexes, integrity
from persisting.engine.durable import DirectorySnapshot, is_local, local_path
from persisting.engine.blob_digests import blob_file_digests
from persisting.engine.payloads import PayloadColumn, payload_columns
from persisting.engine.commits import (
    LSN_KEY,
    WRITER_KEY,
    applied_lsn,
    commit_properties,
    is_conflict,
    remember_applied,
    retry_on_conflict,
    writer_applied_lsn,
)
from persisting.engine.lance_io import (
    storage_version,
    default_wal_dir,
    lance_errors,
    logical_schema,
    open_dataset,
    variable_width,
)
from persisting.engine.metrics import TableMetrics
from persisting.engine.options import TableOptions
from persisting.engine.pending import Pending
from persisting.engine.reads import TableReads
from persisting.engine.schema import Evolution, conform, evolve, fit_vectors, records_to_batch, screen_replayed
from persisting.engine.wal import FRAME_BATCH, WAL, Frame, ReplayReport, read_frames
from persisting.engine import remote_log
from persisting.engine.dedup import Dedup, last_seen
from persisting.engine.remote_create import creation_lease
from persisting.engine.remote_wal import RemoteWAL
from persisting.engine.writers import (
    Orphan,
    creation_lock,
    TableLock,
    WriterDir,
    find_orphans,
    live_writer_ids,
    new_writer_id,
    read_base,
    writer_wal_dirs,
)
from persisting.errors import (
    ClosedError,
    ConfigError,
    CorruptionError,
    NotFoundError,
    PersistingError,
    ReadOnlyError,
    StorageError,
    WALError,
)

__all__ = ["LSN_KEY", "WRITER_KEY", "Table", "applied_lsn", "writer_applied_lsn"]

Rows: TypeAlias = "pa.RecordBatch | pa.Table | Sequence[Mapping[str, Any]]"
# appends wait once the buffer holds this many flush_rows / flush_bytes while a commit runs: a
# high row limit lets a fast writer's rows gather into larger commits (a commit has a fixed
# cost of ~10 ms in fsyncs and manifests), the byte limit bounds memory
_BACKPRESSURE_ROWS, _BACKPRESSURE_BYTES = 64, 4


class Table(TableReads):
    """A Lance dataset with a WAL in front; see the module docstring for the guarantees.

    ``uri`` is a local path or an object-store URI (``s3://...`` with ``storage_options``);
    ``wal_dir`` is always local and required for a remote writer. ``schema`` declares types
    and field metadata (e.g. blob columns) up front; other fields are inferred and evolve.
    ``version`` (a number or tag) opens that old version read-only.
    ``exclusive`` refuses other writers (``LockedError``) for stores that need a single writer.
    ``follow`` makes every read check for newer commits first; stores that keep their own
    position maps pass False and call :meth:`refresh` when they choose.
    ``wal_uri`` (``s3://...``) puts the WAL on object storage (:mod:`persisting.engine.remote_wal`;
    ``remote_wal_uri(uri)`` places it beside the dataset); ``wal_dir`` is then optional.
    ``writer_id`` names a stable writer identity (e.g. a queue bucket): opening it takes the
    identity over from its previous owner, waiting up to ``wal_lease_seconds`` for a live one.
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
        exclusive: bool = False,
        follow: bool = True,
        wal_uri: str | None = None,
        writer_id: str | None = None,
        payloads: Sequence[PayloadColumn] = (),
    ) -> None:
        self.uri = str(uri)
        self.options = options or TableOptions()
        self.storage_options = storage_options
        self.read_only = read_only or version is not None
        self.name = name or os.path.basename(self.uri.rstrip("/")).removesuffix(".lance")
        self.metrics = TableMetrics(store, self.name)
        # payload columns checked against a declared checksum column (besides the X__xxh3 rule):
        # their new blob files are recorded from those checksums, not read back after a commit
        # payload columns whose checksums cover their blob files: new files are recorded from them
        self.payloads: tuple[PayloadColumn, ...] = tuple(payloads)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._commit_lock = threading.Lock()
        self._closed = False
        self._auto_follow = follow
        self._attempted_lsn = 0  # the last LSN a commit was attempted for (retries check Lance first)
        self._table_lock: TableLock | None = None
        self._writer: WriterDir | None = None
        self.writer_id = new_writer_id()  # replaced by the WAL directory's id when there is one
        self._wal: WAL | RemoteWAL | None = None
        self._remote = remote_log.RemoteLog(self, wal_uri, writer_id) if wal_uri is not None and not read_only else None
        self._remote_reader = (  # a reader shows acknowledged rows still in an object-store WAL
            remote_log.RemoteReader.open(self.uri, wal_uri, storage_options)
            if self.read_only and version is None and (wal_uri is not None or wal_dir is None) else None
        )
        self._dedup: Dedup | None = None
        self._pending = Pending()
        self._flush_error: BaseException | None = None
        self._flusher: threading.Thread | None = None
        self._known = KnownSchemas()  # batch schemas merged into _schema (append skips evolve for them)
        self.recovery_report = ReplayReport()
        local = is_local(self.uri)
        self.wal_dir = default_wal_dir(self.uri) if wal_dir is None and local else wal_dir
        if local and os.path.exists(local_path(self.uri)) and not os.path.isdir(local_path(self.uri)):
            raise StorageError(f"table path {local_path(self.uri)} exists and is a file, not a dataset directory")
        if not self.read_only:
            if self.wal_dir is None and self._remote is None:
                raise WALError(
                    f"table {self.uri} is remote: pass wal_dir, a local directory for its WAL and lock, "
                    "or wal_uri to keep the WAL on object storage"
                )
            if self.wal_dir is not None:
                self._table_lock = TableLock(self.wal_dir, self.uri, exclusive=exclusive)
        self._layout_cache = None  # (dataset, its RowLayout): see row_layout
        try:
            self._ds = open_dataset(self.uri, storage_options, version)
            self._declared = schema
            self._version = version
            self._load_state()
            if version is None:
                self._replay_for_reader() if self.read_only else self._recover()
        except BaseException:
            self._release_locks()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _load_state(self) -> None:
        self._known.clear()
        self._schema: pa.Schema | None = logical_schema(self._ds.schema) if self._ds is not None else None
        if self._declared is not None:
            self._schema = evolve(self._schema, self._declared).schema
        if self._ds is None and self._schema is not None:
            self._schema = self._with_compression(self._schema, tuple(self._schema.names))
        self._flushed_rows = self._ds.count_rows() if self._ds is not None else 0
        self._applied = 0  # this writer's own LSNs start at 1 in its fresh WAL
        self._next_lsn = 1

    def _replay_for_reader(self) -> None:
        """A reader also shows rows acknowledged but not yet committed: every writer's WAL
        frames above that writer's applied LSN (no locks taken). A live writer may commit and
        drop segments meanwhile; then read the newer version and replay again."""
        local = self.wal_dir is not None and os.path.isdir(self.wal_dir)
        if not local and self._remote_reader is None:
            return
        for attempt in range(5):
            pending, report = Pending(), ReplayReport()
            try:
                for _wid, path, frame in self._reader_frames(local, report):
                    if frame.type == FRAME_BATCH:
                        batch = screen_replayed(
                            decode_batch(frame.payload, where=f"{path} frame lsn {frame.lsn}"), self._schema,
                            mode=self.options.recovery, wal_dir=path, lsn=frame.lsn, report=report,
                        )
                        if batch is not None:
                            self._evolve_schema(batch.schema)
                            pending.add(batch)
            except (CorruptionError, WALError):
                latest = open_dataset(self.uri, self.storage_options)
                moved = latest is not None and (self._ds is None or latest.version != self._ds.version)
                if attempt == 4 or not moved:
                    raise
                self._ds = latest
                self._flushed_rows = latest.count_rows()
                self._schema = logical_schema(latest.schema)
                continue
            if self._remote_reader is not None and self._remote_reader.listed and attempt < 4 and self._reader_moved():
                continue  # a writer committed (and dropped segments) while we listed: look again
            self._pending, self.recovery_report = pending, report
            return

    def _reader_frames(self, local: bool, report: ReplayReport) -> Iterator[tuple[str, str, Frame]]:
        """Every writer's frames above its applied LSN: local WAL directories, then the
        object-store WAL (:class:`remote_log.RemoteReader`)."""
        if local:
            assert self.wal_dir is not None
            for wid, path in writer_wal_dirs(self.wal_dir):
                floor_version, floor_lsn = read_base(path) if wid else (0, 0)
                applied = writer_applied_lsn(self._ds, wid, floor_version, floor_lsn)
                for frame in read_frames(path, after_lsn=applied, mode=self.options.recovery, report=report):
                    yield wid, path, frame
        if self._remote_reader is not None:
            yield from self._remote_reader.frames(self._ds, self.options.recovery, report)

    def _reader_moved(self) -> bool:
        """Move to the newest version if it is newer than the one the replay was read against."""
        if self._ds is not None and self._ds.latest_version == self._ds.version:
            return False
        latest = open_dataset(self.uri, self.storage_options)
        if latest is None or (self._ds is not None and latest.version == self._ds.version):
            return False
        self._ds, self._flushed_rows = latest, latest.count_rows()
        self._schema = logical_schema(latest.schema)
        return True

    def _release_locks(self) -> None:
        if self._remote is not None:
            self._remote.release()
        if self._writer is not None:
            self._writer.release()
        if self._table_lock is not None:
            self._table_lock.release()

    def _recover(self) -> None:
        """Adopt the WAL of every dead writer, then start this writer's own WAL."""
        if self._remote is not None:
            self._remote.recover()
            self._update_wal_metric()
            return
        assert self.wal_dir is not None
        for orphan in find_orphans(self.wal_dir):
            try:
                self._adopt(orphan)
            finally:
                orphan.writer.release()
        if self.options.wal_enabled:
            base = self._ds.version if self._ds is not None else 0
            self._writer = WriterDir.create(self.wal_dir, base)
            self.writer_id = self._writer.writer_id
            self._wal = WAL(
                self._writer.path,
                next_lsn=1,
                sync=self.options.wal_sync,
                sync_interval=self.options.wal_sync_interval,
                sync_bytes=self.options.wal_sync_bytes,
                max_segment_size=self.options.max_wal_size,
            )
        self._applied, self._next_lsn = 0, 1
        self._dedup = Dedup(self.options.dedup) if self.options.dedup else None
        self._update_wal_metric()

    def _adopt(self, orphan: Orphan) -> None:
        """Commit a dead writer's unapplied frames under its own id, then remove its WAL.

        Its applied LSN comes from the newest commit carrying its id (walking back no further
        than its BASE record), so a crash of the adopter at any point leaves an orphan that
        the next adopter replays without loss or duplicates.
        """
        wd = orphan.writer
        floor_version, floor_lsn = wd.read_base() if not orphan.legacy else (0, 0)
        # the writer may have committed after this table opened and before it died: look at
        # the newest version, not the one this open started from
        self._ds = open_dataset(self.uri, self.storage_options) or self._ds
        applied = writer_applied_lsn(self._ds, wd.writer_id, floor_version, floor_lsn)
        frames = read_frames(wd.path, after_lsn=applied, mode=self.options.recovery, report=self.recovery_report)
        self._replay_frames(frames, wd.writer_id, wd.path, applied)
        _kill_point("before_orphan_removed")
        wd.remove()

    def _replay_frames(
        self, frames: Any, writer_id: str, where: str, applied: int, owner_check: Callable[[], None] | None = None
    ) -> Dedup | None:
        """Commit replayed frames under ``writer_id`` (deduplicated when the table asks),
        in commits of at most ``flush_rows``; returns the writer's dedup state. ``owner_check``
        (a lease's check) runs before each commit, as for a writer's own commits."""
        report = self.recovery_report
        dedup = Dedup(self.options.dedup, last_seen(self._ds, writer_id)) if self.options.dedup else None
        pending = Pending()
        last = applied
        for frame in frames:
            if frame.type != FRAME_BATCH:
                continue
            last = frame.lsn
            batch = screen_replayed(
                decode_batch(frame.payload, where=f"{where} frame lsn {frame.lsn}"), self._schema,
                mode=self.options.recovery, wal_dir=where, lsn=frame.lsn, report=report,
            )
            if batch is not None and dedup is not None:
                batch = dedup.filter(batch)
            if batch is None:
                continue
            self._evolve_schema(batch.schema)
            pending.add(batch)
            if pending.buffer_rows >= self.options.flush_rows or pending.buffer_bytes >= self.options.flush_bytes:
                self._commit_adopted(pending, writer_id, last, dedup, owner_check)
                pending = Pending()
        if pending:
            self._commit_adopted(pending, writer_id, last, dedup, owner_check)
        return dedup

    def _commit_adopted(
        self, pending: Pending, writer_id: str, last_lsn: int, dedup: Dedup | None = None,
        owner_check: Callable[[], None] | None = None,
    ) -> None:
        if self._schema is None:
            return  # only empty batches were logged: nothing to commit
        pending.seal(last_lsn)
        data = pending.table(self._schema)
        with self._commit_lock:
            ds = self._commit_data(data, self._schema, writer_id, last_lsn, dedup=dedup, owner_check=owner_check)
            with self._lock:
                self._ds = ds
                self._flushed_rows = ds.count_rows()

    # -- writing -----------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError(f"table {self.uri} is closed; open it again to use it")
        if self.read_only:
            raise ReadOnlyError(f"table {self.uri} is open read-only; open it without read_only to write", path=self.uri)

    def _to_batch(self, rows: Rows) -> pa.RecordBatch:
        if isinstance(rows, pa.Table):
            batches = rows.to_batches()
            if not batches:
                return pa.RecordBatch.from_pylist([], schema=rows.schema)
            return batches[0] if len(batches) == 1 else pa.concat_batches(batches)
        if isinstance(rows, pa.RecordBatch):
            return rows
        return records_to_batch(rows, self._schema)

    def _evolve_schema(self, schema: pa.Schema) -> None:
        evolution = evolve(self._schema, schema)
        self._schema = self._with_compression(evolution.schema, evolution.added)

    def _buffer_batch(self, batch: pa.RecordBatch, evolution: Evolution | None) -> None:
        """Buffer an appended batch; ``evolution``: its schema's merge, when not a known layout."""
        if evolution is not None:
            self._schema = self._with_compression(evolution.schema, evolution.added)
            self._known.add(batch.schema)
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
            known = self._known.find(batch.schema)
            evolution = None
            if known is None:
                batch = fit_vectors(batch, self._schema)
                known = self._known.find(batch.schema)
                if known is None:  # raises SchemaError before anything is written
                    evolution = evolve(self._schema, batch.schema)
            if self._dedup is not None and batch.num_rows:
                batch = self._dedup.filter(batch)  # retries of rows already logged
            if batch.num_rows == 0:
                return self._next_lsn - 1
            if self._wal is not None:
                lsn = self._wal.append(encode_batch(batch, serialized_schema(known) if known is not None else None))
            else:
                lsn = self._next_lsn
            self._next_lsn = lsn + 1
            self._buffer_batch(batch, evolution)
            self.metrics.records.inc(batch.num_rows)
            self.metrics.buffer.set(self._pending.rows)
            self._update_wal_metric()
            if self._buffer_full(1):
                if self.options.background_flush:
                    self._schedule_commit(batch)
                else:
                    self.flush()
            elif self.options.flush_interval is not None:
                self._commit_when_due(batch)
            wait = isinstance(self._wal, RemoteWAL) and self.options.wal_sync == "always"
        if wait:
            self._wal.wait(lsn)  # type: ignore[union-attr]  # outside the lock: appenders share PUTs
        return lsn

    def unseen(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` without the rows :meth:`append` would drop as retries (``dedup``)."""
        with self._lock:
            return self._dedup.filter(batch, remember=False) if self._dedup is not None else batch

    def _buffer_full(self, times: int) -> bool:
        p, o = self._pending, self.options
        return p.buffer_rows >= times * o.flush_rows or p.buffer_bytes >= times * o.flush_bytes

    def _backlogged(self, last: pa.RecordBatch) -> bool:
        """Whether the buffer, without the batch ``last`` just appended, is over the limits."""
        p, o = self._pending, self.options
        rows, size = p.buffer_rows - last.num_rows, p.buffer_bytes - last.get_total_buffer_size()
        return rows >= _BACKPRESSURE_ROWS * o.flush_rows or size >= _BACKPRESSURE_BYTES * o.flush_bytes

    def _schedule_commit(self, batch: pa.RecordBatch) -> None:
        """Hand the buffer to the background committer; wait only if it falls far behind.

        The backlog that makes an append wait does not count the batch it just added, so a
        bulk writer whose batches are larger than the limit still prepares its next batch
        while one is committed; memory stays bounded by the limits plus one batch."""
        if self._flusher is None:
            self._start_flusher()
        while self._pending.inflight and self._backlogged(batch) and self._flush_error is None:
            self._changed.wait()
        if self._flush_error is not None:
            self.flush()
        self._pending.seal(self._next_lsn - 1)
        self._changed.notify_all()

    def _commit_when_due(self, batch: pa.RecordBatch) -> None:
        """``flush_interval``: have the buffer committed once its oldest row is that old. The
        background committer keeps the timer (woken when the buffer starts filling, so later
        appends cost nothing); without one, this append commits if the time has come."""
        if not self.options.background_flush:
            since = self._pending.buffer_since
            if since is not None and time.monotonic() - since >= self.options.flush_interval:  # type: ignore[operator]
                self.flush()
        elif self._flusher is None:
            self._start_flusher()
        elif self._pending.buffer_rows == batch.num_rows:  # the buffer was empty: a new deadline
            self._changed.notify_all()

    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(target=self._flush_loop, name=f"persisting-flush-{self.name}", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        interval = self.options.flush_interval
        while True:
            with self._lock:
                while not self._closed:
                    p = self._pending
                    if p.inflight and self._flush_error is None:
                        break
                    if interval is not None and p.buffer_since is not None and self._flush_error is None:
                        due = p.buffer_since + interval - time.monotonic()
                        if due <= 0:  # the oldest buffered row has waited long enough
                            p.seal(self._next_lsn - 1)
                            break
                        self._changed.wait(due)
                    else:
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
                data = self._pending.inflight_table(schema)
                last_lsn = self._pending.inflight_lsn
                ds = self._ds
            start = time.perf_counter()
            owner_check = self._wal.check_owner if isinstance(self._wal, RemoteWAL) else None
            ds = self._commit_data(data, schema, self.writer_id, last_lsn, ds, dedup=self._dedup, owner_check=owner_check)
            with self._lock:
                self._ds = ds
                self._applied = last_lsn
                self.metrics.bytes_written.inc(data.nbytes)
                self.metrics.flush.observe(time.perf_counter() - start)
                self._flushed_rows = ds.count_rows()
                self._pending.committed()
                if self.options.background_flush and self._buffer_full(1):
                    self._pending.seal(self._next_lsn - 1)  # it filled during this commit
                self.metrics.buffer.set(self._pending.rows)
                self._changed.notify_all()
            if self._wal is not None:
                self._wal.drop_through(last_lsn)
            if self._writer is not None:
                self._writer.write_base(ds.version, last_lsn)  # a tighter floor for an adopter
            self._update_wal_metric()
            limit = self.options.compact_fragments
            if limit and len(ds.get_fragments()) >= limit:
                self._compact_committed()
            if indexes.needs_optimize(self._ds):
                self._compact_committed(indexes.optimize)

    def _commit_data(
        self,
        data: pa.Table,
        schema: pa.Schema,
        writer_id: str,
        last_lsn: int,
        ds: lance.LanceDataset | None = None,
        dedup: Dedup | None = None,
        owner_check: Callable[[], None] | None = None,
    ) -> lance.LanceDataset:
        """One durable Lance append of ``data`` carrying ``writer_id`` and ``last_lsn``.

        Appends from other writers in between never conflict (Lance rebases an append); the
        first commit to a new table may race another writer's create, and then appends.

        ``owner_check`` (a lease holder's check, for the WAL on object storage) runs after the
        version the append is based on was read and before Lance commits on it, again after
        every re-read: a successor takes the lease, then commits a fence
        (:func:`~persisting.engine.commits.fence_commits`) before it replays, so an append
        prepared before the takeover either landed before the fence (the replay skips it) or
        conflicts with it and finds the lease gone on the retry.
        """
        ds = ds if ds is not None else self._ds
        snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
        props = commit_properties(writer_id, last_lsn)
        if dedup is not None:
            props.update(dedup.commit_property(data))
        own = writer_id == self.writer_id
        if own and last_lsn <= self._attempted_lsn:
            # an earlier attempt at these rows raised: it may have failed after Lance committed
            latest = open_dataset(self.uri, self.storage_options)
            if latest is not None and writer_applied_lsn(latest, writer_id, ds.version if ds else 0) >= last_lsn:
                if snapshot is not None:
                    integrity.fsync_and_record(snapshot)
                return latest
        if own:
            self._attempted_lsn = max(self._attempted_lsn, last_lsn)
        created = False
        if ds is None:
            # Lance turns concurrent creates into overwrites (measured: 4 processes creating one
            # dataset kept one's rows), so creation is serialised by a lock every local writer
            # shares, and whoever comes second appends to what the first created
            with creation_lock(self.uri, self.wal_dir or remote_log.scratch_dir(self.uri)), (
                creation_lease(self.uri, self.storage_options, self.options.wal_lease_seconds)
                if self._remote is not None else nullcontext()  # writers on other hosts create it too
            ):
                ds = open_dataset(self.uri, self.storage_options)
                if ds is None:
                    if owner_check is not None:
                        owner_check()
                    ds = lance.write_dataset(
                        data, self.uri, schema=schema, mode="create", data_storage_version=storage_version(schema),
                        storage_options=self.storage_options, transaction_properties=props,
                    )
                    created = True
        if not created:
            current = ds

            def attempt() -> lance.LanceDataset:
                nonlocal current
                try:
                    if owner_check is not None:
                        owner_check()  # after ``current`` was read: see above
                    return self._append(current, data, schema, props, owner_check)
                except Exception:
                    current = open_dataset(self.uri, self.storage_options) or current
                    raise

            ds = retry_on_conflict(attempt)
        _kill_point("after_commit")
        if snapshot is not None:
            committed = ds
            integrity.fsync_and_record(snapshot, lambda new: blob_file_digests(
                committed, snapshot.root, new, payload_columns(committed.schema.names, self.payloads)))
        _kill_point("after_fsync")
        return ds

    def _append(
        self, ds: lance.LanceDataset, data: pa.Table, schema: pa.Schema, props: dict[str, str],
        owner_check: Callable[[], None] | None = None,
    ) -> lance.LanceDataset:
        evolved = self._prepare_schema(ds, schema)
        if owner_check is not None and evolved.version != ds.version:
            owner_check()  # the append is now based on a newer version: check after reading it
        ds = evolved
        return lance.write_dataset(
            data, ds, mode="append", storage_options=self.storage_options, transaction_properties=props,
        )

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
            transaction_properties=commit_properties(self.writer_id, self._applied),
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
        """Before cleanup removes old transactions: keep each local writer's applied LSN in the
        dataset config (maintenance commits carry none). Writers on other hosts keep their own
        BASE floors; see the README's "Many processes" limits."""
        local = live_writer_ids(self.wal_dir) if self.wal_dir is not None else set()
        remote = self._remote.writer_ids() if self._remote is not None else set()
        remember_applied(ds, local | remote | {self.writer_id, ""})

    def _maintain(self, action: Any, *, removes_versions: bool = False) -> Any:
        """Run a maintenance action on the newest version once everything pending is
        committed; a lost race with another writer's commit is retried on the newer version."""
        self.flush()
        with self._commit_lock:
            if self._ds is None and open_dataset(self.uri, self.storage_options) is None:
                return None
            snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None

            def attempt() -> Any:
                ds = open_dataset(self.uri, self.storage_options)
                assert ds is not None
                if removes_versions:
                    self._record_applied_lsn(ds)
                return action(ds)

            result = retry_on_conflict(attempt)
            fresh = lance.dataset(self.uri, storage_options=self.storage_options)
            if snapshot is not None:
                integrity.fsync_and_record(snapshot)
            with self._lock:
                self._ds = fresh
                self._flushed_rows = fresh.count_rows()
            return result

    def _compact_committed(self, action: Any = None) -> None:
        """Compaction (or another maintenance ``action``) from inside a commit (the commit lock is held)."""
        ds = self._ds
        assert ds is not None
        snapshot = DirectorySnapshot(local_path(self.uri)) if is_local(self.uri) else None
        try:
            if action is not None:
                action(ds)
            else:
                ds.optimize.compact_files(materialize_deletions_threshold=0.0)
        except Exception as exc:  # noqa: BLE001 - best effort: another writer compacted or deleted first
            if not is_conflict(exc):
                raise
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
        if self._ds is not None and self._ds.describe_indices():
            self._maintain(indexes.optimize)  # compaction keeps indexes; fold in what they miss
        return {"fragments_removed": m.fragments_removed, "fragments_added": m.fragments_added}

    def cleanup(self, *, older_than: timedelta | None = None, retain_versions: int | None = None) -> int:
        """Delete old versions' files (tagged versions stay); return the bytes removed. With
        an object-store WAL, also its spent fences and released leases
        (:meth:`remote_log.RemoteLog.cleanup`)."""
        self._check_writable()
        stats = self._maintain(
            lambda ds: ds.cleanup_old_versions(
                older_than=older_than if older_than is not None else timedelta(0),
                retain_versions=retain_versions,
                error_if_tagged_old_versions=False,
            ),
            removes_versions=True,
        )
        if self._remote is not None:  # spent fences and released leases of the object-store WAL
            self._remote.cleanup(older_than.total_seconds() if older_than is not None else 0.0)
        return 0 if stats is None else int(stats.bytes_removed)

    # -- indexes and search (persisting.engine.indexes) ------------------------------------------
    def create_index(self, column: str, *, kind: str = "vector", metric: str = "l2", **tuning: Any) -> indexes.IndexInfo:
        """Index ``column`` (``kind`` "vector", "btree" or "bitmap"; ``metric`` for vectors: "l2",
        "cosine", "dot"; vector ``tuning``: index_type, num_partitions, num_sub_vectors, ...).
        Commits pending rows first; the index is one Lance commit, replacing the column's old one.
        Bad input raises ConfigError/NotFoundError naming the column before anything is written."""
        self._check_writable()
        plan = indexes.plan_index(self.schema, column, kind, metric, tuning, self.uri)
        self._maintain(lambda ds: indexes.build(ds, plan))
        return next(i for i in self.indexes() if i.name == plan.name)

    def indexes(self) -> list[indexes.IndexInfo]:
        """Every index: column, kind, metric, and committed rows covered / not yet covered."""
        with self._lock:
            self._check_open()
            return indexes.describe(self._ds)

    def optimize_indexes(self) -> None:
        """Fold rows appended since an index was built into it now (commits do it by policy)."""
        self._check_writable()
        self._maintain(indexes.optimize)

    def search(
        self, column: str, query: Any, k: int = 10, *, filter: str | None = None, columns: list[str] | None = None,
        metric: str | None = None, nprobes: int | None = None, refine_factor: int | None = None,
    ) -> pa.Table:
        """The ``k`` rows whose ``column`` vector is nearest ``query``, nearest first, with a
        ``_distance`` column; among committed rows (indexed or not) and this writer's pending
        ones, those matching the SQL ``filter`` if given. See :mod:`persisting.engine.indexes`."""
        with self._lock:
            self._check_open()
            ds, schema, pending = self._ds, self._schema, None
            if self._pending and schema is not None:
                pending = self._pending.dataset(schema) if filter is not None else self._pending.table(schema)
        with lance_errors(self.uri, "rows", filter=filter, schema=schema):
            return indexes.search(ds, pending, schema, column, query, k, filter=filter, columns=columns,
                                  metric=metric, nprobes=nprobes, refine_factor=refine_factor, uri=self.uri)

    def delete(self, predicate: str) -> None:
        """Delete rows matching a SQL predicate (commits pending rows first)."""
        self._check_writable()
        self._maintain(lambda ds: ds.delete(predicate))

    def discard_pending(self) -> int:
        """Drop every row appended but not committed yet; return how many.

        Only for tables without a WAL (durability ``"none"``), whose rows are promised nothing
        before :meth:`flush` returns: a writer whose flush failed uses it to abandon rows that
        reference memory it no longer vouches for (a checkpoint's tensors, zero-copy), instead
        of letting a later commit store whatever those bytes hold then."""
        if self.options.durability != "none":
            raise ConfigError(
                f"table {self.uri} logs appends to its WAL (durability {self.options.durability!r}): "
                "acknowledged rows cannot be discarded",
                durability=self.options.durability,
            )
        with self._commit_lock, self._lock:  # no commit of these rows is under way
            self._check_writable()
            dropped = self._pending.rows
            self._pending.clear()
            self._flush_error = None
            self.metrics.buffer.set(0)
            self._changed.notify_all()
            return dropped

    def delete_in(self, column: str, values: Iterable[Any]) -> int:
        """Delete every row whose ``column`` holds one of ``values`` (typed by the column, quoted
        once, several deletes for long lists); commits pending rows first; returns rows deleted."""
        from persisting.engine.rowkeys import delete_chunks, in_predicates

        self._check_writable()
        predicates = in_predicates(self.schema, column, values)
        if not predicates:
            return 0
        done = [0]
        self._maintain(lambda ds: delete_chunks(ds, predicates, done))
        return done[0]

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

    def _follow(self) -> None:
        """Move to the newest committed version if another writer committed one (a manifest
        check costing ~10 us). Skipped while this writer has a commit in flight, so its rows
        are never counted twice, and for handles that asked not to follow (``follow=False``)."""
        if not self._auto_follow or self._version is not None or self._pending.inflight:
            return
        self._move_to_latest()

    def _move_to_latest(self) -> None:
        with self._lock:
            ds = self._ds
            try:
                if ds is not None and ds.latest_version == ds.version:
                    return
                fresh = open_dataset(self.uri, self.storage_options)
            except (OSError, ValueError):
                return  # a read that follows must not fail on a racing commit; the next one retries
            if fresh is None or (ds is not None and fresh.version <= ds.version):
                return
            self._ds = fresh
            self._flushed_rows = fresh.count_rows()
            if self.read_only:
                self._pending = Pending()  # replayed WAL rows may be committed now: replay again
            stored = logical_schema(fresh.schema)
            if self._schema is None:
                self._schema = stored
            else:
                try:
                    self._schema = evolve(stored, self._schema).schema
                except PersistingError:
                    self._schema = stored
            self._known.clear()
            if self.read_only:
                self._replay_for_reader()

    def refresh(self) -> None:
        """See every writer's commits up to now (reads do this on their own unless the
        table was opened with ``follow=False``); a checked-out version never changes."""
        with self._lock:
            self._check_open()
            if self._version is not None or self._pending.inflight:
                return
            self._move_to_latest()

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
            clean = self._flush_error is None and not self._pending
            if self._writer is not None and clean:
                self._writer.remove()  # everything it logged is committed: nothing to adopt
            if self._remote is not None:
                self._remote.close(clean)
            self._release_locks()

    @property
    def writer_wal_dir(self) -> str | None:
        """This writer's own WAL directory (under ``wal_dir/writers/``), if it logs."""
        return self._writer.path if self._writer is not None else None

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
