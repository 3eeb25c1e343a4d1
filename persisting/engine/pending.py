"""Rows acknowledged but not yet committed to Lance: the buffer, and the part in flight.

Appends go to ``buffer``. A flush *seals* it: the buffer becomes ``inflight`` (one at a time)
while a commit runs, and new appends start a fresh buffer. Reads see inflight then buffer, in
append order, so nothing is invisible while it is being committed.
"""

from __future__ import annotations

import time

import lance
import pyarrow as pa

from persisting.engine.schema import conform_many

__all__ = ["Pending"]

_SMALL = 1024  # batches with fewer rows than this are merged in runs...
_RUN = 256  # ...of this many, so single-record appends do not cost a batch each at commit


class Pending:
    """Uncommitted batches in append order, with cached views for reads. Not thread-safe:
    the owning Table guards it with its lock."""

    def __init__(self) -> None:
        self.buffer: list[pa.RecordBatch] = []
        self.inflight: list[pa.RecordBatch] = []
        self.buffer_rows = 0
        self.buffer_bytes = 0
        self.inflight_rows = 0
        self.inflight_lsn = 0
        self._table: pa.Table | None = None
        self._inflight_table: pa.Table | None = None
        self._dataset: lance.LanceDataset | None = None
        self._run = 0  # trailing small batches of one schema in ``buffer``
        self.buffer_since: float | None = None  # time.monotonic() of the buffer's oldest batch

    @property
    def rows(self) -> int:
        return self.inflight_rows + self.buffer_rows

    def __bool__(self) -> bool:
        return bool(self.buffer or self.inflight)

    def add(self, batch: pa.RecordBatch) -> None:
        if not self.buffer:
            self.buffer_since = time.monotonic()
        small = batch.num_rows < _SMALL
        if small and self._run and self.buffer[-1].schema.equals(batch.schema, check_metadata=True):
            self._run += 1
        else:
            self._run = 1 if small else 0
        self.buffer.append(batch)
        self.buffer_rows += batch.num_rows
        self.buffer_bytes += batch.get_total_buffer_size()
        if self._run >= _RUN:
            self.buffer[-self._run :] = [pa.concat_batches(self.buffer[-self._run :])]
            self._run = 0
        self._table = self._dataset = None

    def seal(self, last_lsn: int) -> bool:
        """Move the buffer in flight (if nothing else is); True if there is work to commit."""
        if not self.inflight and self.buffer:
            self.inflight, self.inflight_rows, self.inflight_lsn = self.buffer, self.buffer_rows, last_lsn
            self.buffer, self.buffer_rows, self.buffer_bytes, self._run = [], 0, 0, 0
            self.buffer_since = None
        return bool(self.inflight)

    def committed(self) -> None:
        """The inflight batches are in Lance now."""
        self.inflight, self.inflight_rows, self.inflight_lsn = [], 0, 0
        self._table = self._dataset = self._inflight_table = None

    def clear(self) -> None:
        self.committed()
        self.buffer, self.buffer_rows, self.buffer_bytes, self._run = [], 0, 0, 0
        self.buffer_since = None

    def table(self, schema: pa.Schema) -> pa.Table:
        """Everything pending, conformed to ``schema`` (cached until it changes)."""
        if self._table is None or not self._table.schema.equals(schema):
            batches = self.inflight + self.buffer
            self._dataset = None
            self._table = (
                conform_many(batches, schema) if batches else schema.empty_table()
            )
        return self._table

    def range_table(self, schema: pa.Schema, start: int, stop: int | None) -> pa.Table:
        """Pending rows ``start..stop`` conformed to ``schema`` (the table's, or the columns a
        reader wants): only the batches they are in, and only those columns (a reader that
        catches up with a few new rows does not conform the whole buffer). Not cached: the
        whole buffer conformed to the table's schema is :meth:`table`."""
        pieces, row = [], 0
        for b in (*self.inflight, *self.buffer):
            n = b.num_rows
            if row + n > start and (stop is None or row < stop):
                lo = max(0, start - row)
                hi = n if stop is None else min(n, stop - row)
                pieces.append(b.slice(lo, hi - lo))
            row += n
            if stop is not None and row >= stop:
                break
        return conform_many(pieces, schema) if pieces else schema.empty_table()

    def inflight_table(self, schema: pa.Schema) -> pa.Table:
        """The rows in flight, conformed to ``schema``, for a commit: only them (the buffer
        filling meanwhile is not copied), and large batches are not concatenated (Lance
        writes a chunked column piece by piece, so a copy would only cost a memcpy)."""
        t = self._inflight_table
        if t is None or not t.schema.equals(schema):
            t = conform_many(self.inflight, schema, copy=False) if self.inflight else schema.empty_table()
            self._inflight_table = t
        return t

    def dataset(self, schema: pa.Schema) -> lance.LanceDataset:
        """Everything pending as an in-memory Lance dataset, so SQL filters apply to it too."""
        if self._dataset is None:
            self._dataset = lance.write_dataset(
                self.table(schema), f"memory://persisting-pending-{id(self)}-{time.monotonic_ns()}"
            )
        return self._dataset
