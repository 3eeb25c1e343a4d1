"""One bucket's records: a :class:`~persisting.engine.Table` plus the write buffer in front of it.

Offsets are row positions in the bucket's table, so they are stable across restarts. The most
recent records (the *tail*: everything since the last commit to Lance) are also kept here as the
Arrow batches that were appended, so a reader following the writer slices only what it asks for
instead of re-reading the table's whole buffer.

Without a WAL the tail *is* the write buffer: records are validated and schema-checked when they
are put, and handed to the table as one batch when ``flush_threshold`` is reached, which the
table commits in the background (one Lance commit per threshold, however the records arrived).
Flat records whose values all fit the stored columns
(:class:`~persisting.queue.records.ScalarFields`) wait as dicts and are converted to Arrow
together; others are converted when put. With the WAL on, every put is appended to the table
at once, so it is in the log before it is acknowledged; the tail then mirrors the table's
uncommitted rows for reads and forgets them once the table has committed them.

Everything here is synchronous and thread-safe; the backends wrap it in Pulsing's async protocol.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import threading
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from persisting.engine import Table
from persisting.engine.lance_io import default_wal_dir
from persisting.engine.remote_wal import remote_wal_uri
from persisting.engine.schema import conform, evolve
from persisting.engine.shell import StoreShell
from persisting.queue.options import FLUSH_BYTES, LanceBackendOptions
from persisting.queue.records import ScalarFields, to_batch
from persisting.queue.topics import claim_topic
from persisting.queue.widening import Layout

__all__ = ["Arrivals", "BucketStore"]





class Arrivals:
    """Wakes readers that wait for new records; safe across threads and event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def notify(self) -> None:
        with self._lock:
            if not self._waiters:
                return
            waiters, self._waiters = self._waiters, []
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, fut in waiters:
            if loop is current:
                _wake(fut)
            else:
                try:
                    loop.call_soon_threadsafe(_wake, fut)
                except RuntimeError:  # that reader's loop is closed: nobody is waiting any more
                    pass

    async def wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``ready()`` holds (True) or ``timeout`` seconds pass without it (False)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            if ready():
                return True
            self._waiters.append(entry)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return ready()
        finally:
            with self._lock:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return True


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Run:
    """Flat records waiting as dicts; ``fields`` is the schema they were checked against."""

    __slots__ = ("fields", "records")

    def __init__(self, fields: ScalarFields) -> None:
        self.fields = fields
        self.records: list[dict[str, Any]] = []

    @property
    def num_rows(self) -> int:
        return len(self.records)

    def to_batch(self, lo: int = 0, n: int | None = None) -> pa.RecordBatch:
        rows = self.records if lo == 0 and n is None else self.records[lo : None if n is None else lo + n]
        return self.fields.run_batch(rows)


class BucketStore:
    """The records of one bucket, in ``directory/name.lance`` (WAL and lock in ``name.wal``)."""

    def __init__(self, directory: str, name: str, options: LanceBackendOptions, *, enable_metrics: bool = False) -> None:
        remote = options.bucket_uri(name)
        local_wal = remote is not None and not options.remote_wal
        self._shell = StoreShell(
            "queue bucket", remote.rsplit("/", 1)[0] if remote else directory, label=name,
            wal_dir=directory if local_wal else None, object_wal=remote is not None and options.remote_wal,
            reopen="create the backend again",
        )
        self.path = self._shell.table_uri(name)
        self.options = options
        self._threshold = options.threshold
        self._coalesce = not options.wal_enabled
        label = self.path.removesuffix(".lance") if remote else os.path.abspath(self.path).removesuffix(".lance")
        if remote is None:
            if options.topic is not None:  # before any lock or file of the table: refuse, touch nothing
                claim_topic(default_wal_dir(self.path), options.topic, self.path)
            self.table = Table(self.path, options=options.table_options(), store="queue", name=label, exclusive=True, follow=False)
        elif options.remote_wal:
            # the bucket's identity owns its WAL under a lease: whichever node builds this bucket
            # next takes it over, replays what the last owner acknowledged and fences it
            self.table = Table(
                remote, options=options.table_options(), storage_options=options.storage_options, store="queue",
                name=label, follow=False, wal_uri=remote_wal_uri(remote), writer_id=name,
            )
        else:
            self.table = Table(
                remote, options=options.table_options(), storage_options=options.storage_options, store="queue",
                name=label, follow=False, exclusive=True, wal_dir=self._shell.table_wal_dir(name),
            )
        self.label = label
        self._count_reads = enable_metrics
        self._lock = threading.RLock()
        self._base = self.table.count()  # rows read through the table; the tail follows them
        self._layout = Layout(self.table.schema)  # widened columns live in shadow columns
        self._schema: pa.Schema | None = self._layout.logical
        self._merged: pa.Schema | None = None  # the last batch schema merged into _schema
        self._as_stored: pa.Schema | None = None  # the last batch schema stored without mapping
        self._fields = ScalarFields(self._schema)
        self._tail: list[pa.RecordBatch | _Run] = []
        self._starts: list[int] = []  # offset of each tail item's first row, relative to _base
        self._lsns: list[int] = []  # with the WAL: the LSN each tail item was logged with
        self._tail_rows = 0
        self._tail_bytes = 0
        self.arrivals = Arrivals()

    @property
    def total(self) -> int:
        return self._base + self._tail_rows

    # -- writing -----------------------------------------------------------------------------
    def append(self, records: list[dict[str, Any]]) -> None:
        """Store ``records`` (validated dicts) after every earlier one; all or nothing."""
        with self._lock:
            self._check_open()
            if self._coalesce:
                self._stage(records)
                if self._tail_rows >= self._threshold or self._tail_bytes >= FLUSH_BYTES:
                    self._hand_over()  # the table commits it in the background
                else:
                    self.table.metrics.buffer.set(self._tail_rows)
            else:
                self._log(records)
        self.arrivals.notify()

    def _stage(self, records: list[dict[str, Any]]) -> None:
        """Without a WAL: validate and keep in the tail (as dicts when they are flat and fit)."""
        if len(records) == 1 and self._fields.matches(records[0]):
            record = dict(records[0])  # the caller may reuse its dict; the values are immutable
            size = 64 + sum(len(v) for v in record.values() if type(v) in (str, bytes))
            if 4 * size < self.options.max_record_size:  # else convert: the exact size decides
                last = self._tail[-1] if self._tail else None
                if not isinstance(last, _Run) or last.fields is not self._fields:
                    last = _Run(self._fields)
                    self._push(last, 0)
                last.records.append(record)
                self._tail_rows += 1
                self._tail_bytes += size
                return
        batch = self._convert(records)
        self._set_schema(evolve(self._schema, batch.schema).schema)  # SchemaError: nothing kept
        self._push(batch, batch.num_rows, batch.get_total_buffer_size())

    def _hand_over(self) -> None:
        """Without a WAL: give the table the whole tail as one batch (one Lance commit)."""
        if self._tail:
            assert self._schema is not None
            try:
                self._store(self._tail_table(0, self._tail_rows, self._schema).combine_chunks())
            finally:
                if self.table.count() == self.total:  # the table holds them, even if a commit failed
                    self._base += self._tail_rows
                    self._clear_tail()

    def _log(self, records: list[dict[str, Any]]) -> None:
        """With the WAL: append to the table (logged before it returns), mirror in the tail."""
        if len(records) == 1 and self._fields.matches(records[0]):
            batch = self._fields.batch(records[0])
            if self.options.max_record_size < batch.get_total_buffer_size():
                batch = self._convert(records)  # raises the size error
        else:
            batch = self._convert(records)
        if self.options.wal_enabled and getattr(self.options, "dedup", False):
            batch = self.table.unseen(batch)  # a retried put already stored: acknowledge, store nothing
            if batch.num_rows == 0:
                return
        if self._merged is not None and batch.schema.equals(self._merged):
            schema = self._schema  # merged before: evolution only grows and widens
        else:
            schema = evolve(self._schema, batch.schema).schema  # SchemaError: nothing logged
        try:
            lsn = self._store(batch)
        except BaseException:
            if self.table.count() == self.total + batch.num_rows:  # logged; a commit failed after
                self._set_schema(schema)
                self._push(batch, batch.num_rows, lsn=self.table.last_lsn)
            raise
        self._set_schema(schema)
        self._merged = batch.schema
        self._push(batch, batch.num_rows, lsn=lsn)
        self._trim()

    def _trim(self) -> None:
        """With the WAL: forget tail items the table has committed (reads of them go to Lance)."""
        applied = self.table.applied_lsn
        if not self._lsns or applied < self._lsns[0]:
            return
        k = bisect.bisect_right(self._lsns, applied)
        if k == len(self._tail):
            self._base += self._tail_rows
            self._clear_tail()
            return
        dropped = self._starts[k]
        self._base += dropped
        self._tail, self._lsns = self._tail[k:], self._lsns[k:]
        self._starts = [s - dropped for s in self._starts[k:]]
        self._tail_rows -= dropped

    def _store(self, data: pa.RecordBatch | pa.Table) -> int:
        """Append logical rows to the table, a widened column going to its shadow column
        (:mod:`persisting.queue.widening`): the table never rewrites stored rows for it."""
        if self._as_stored is not None and data.schema.equals(self._as_stored):
            return self.table.append(data)  # every column goes where it is named, as it is
        physical, widens = self._layout.to_physical(data, self.table.schema)
        lsn = self.table.append(physical)
        if widens:
            self._layout.learn(self.table.schema)
            self._as_stored = None
        elif physical is data:
            self._as_stored = data.schema
        return lsn

    def _convert(self, records: list[dict[str, Any]]) -> pa.RecordBatch:
        return to_batch(records, self._schema, max_record_size=self.options.max_record_size)

    def _set_schema(self, schema: pa.Schema | None) -> None:
        if schema is not None and (self._schema is None or not schema.equals(self._schema, check_metadata=True)):
            self._fields = ScalarFields(schema)
        self._schema = schema

    def _push(self, item: pa.RecordBatch | _Run, rows: int, nbytes: int = 0, lsn: int | None = None) -> None:
        self._starts.append(self._tail_rows)
        self._tail.append(item)
        if lsn is not None:
            self._lsns.append(lsn)
        self._tail_rows += rows
        self._tail_bytes += nbytes

    def _clear_tail(self) -> None:
        self._tail, self._starts, self._lsns, self._tail_rows, self._tail_bytes = [], [], [], 0, 0

    def flush(self) -> None:
        """Commit every buffered record to Lance, durably."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._coalesce:
            self._hand_over()
            self.table.flush()
        else:
            self.table.flush()
            self._trim()

    # -- reading -----------------------------------------------------------------------------
    def read(self, offset: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records from ``offset``, committed and buffered alike, in order."""
        with self._lock:
            self._check_open()
            end = min(self.total, offset + limit)
            if offset >= end or self._schema is None:
                return []
            schema = self._schema
            parts: list[pa.Table] = []
            if offset < self._base:
                part = self._layout.to_logical(self.table.scan(offset=offset, limit=min(end, self._base) - offset))
                parts.append(part if part.schema == schema else conform(part, schema))
            if end > self._base:
                parts.append(self._tail_table(max(offset, self._base) - self._base, end - self._base, schema))
        out = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        if self._count_reads:
            self.table.metrics.bytes_read.inc(out.nbytes)
        rows: list[dict[str, Any]] = out.to_pylist()
        return rows

    def _tail_table(self, start: int, stop: int, schema: pa.Schema) -> pa.Table:
        """Tail rows [start, stop) as one table with ``schema``; runs of batches that share a
        schema are conformed together, so cost follows the rows, not the number of puts."""
        groups: list[pa.Table] = []
        same: list[pa.RecordBatch] = []

        def close_group() -> None:
            if same:
                groups.append(conform(pa.Table.from_batches(same), schema))
                same.clear()

        i = bisect.bisect_right(self._starts, start) - 1
        while start < stop:
            item, first = self._tail[i], self._starts[i]
            lo = start - first
            n = min(item.num_rows - lo, stop - start)
            batch = item.to_batch(lo, n) if isinstance(item, _Run) else item.slice(lo, n)
            if same and not batch.schema.equals(same[0].schema):
                close_group()
            same.append(batch)
            start += n
            i += 1
        close_group()
        return groups[0] if len(groups) == 1 else pa.concat_tables(groups)

    def persisted(self) -> int:
        """Records committed to Lance."""
        with self._lock:
            return self._base if self._shell.closed else int(self.table.stats()["flushed_rows"])

    def table_stats(self) -> dict[str, Any]:
        with self._lock:
            self._check_open()
            return self.table.stats()

    # -- closing -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        self._shell.check_open()

    def close(self) -> None:
        """Commit what is buffered and release the bucket's writer lock; idempotent."""
        with self._lock:
            if self._shell.closed:
                return
            try:
                self._flush_locked()
            finally:
                self._shell.mark_closed()
                self.table.close()
        self.arrivals.notify()

    @property
    def closed(self) -> bool:
        return self._shell.closed
