"""The read side of a Table: rows in append order across Lance and what is still pending.

Positions count every row ever appended and not deleted: committed rows first (Lance order,
which compaction keeps), then in-flight and buffered rows. Filters are SQL predicates, applied
by Lance to committed rows and to an in-memory Lance copy of the pending ones.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from contextlib import contextmanager
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import lance
import pyarrow as pa

from persisting.engine import integrity
from persisting.engine.lance_io import BLOB_METADATA, GuardedBlob, is_blob, lance_errors, read_blob
from persisting.engine.durable import is_local, local_path
from persisting.engine.rowlayout import RowLayout, row_layout
from persisting.engine.schema import conform
from persisting.errors import ClosedError, NotFoundError

if TYPE_CHECKING:
    from persisting.engine.metrics import TableMetrics
    from persisting.engine.options import TableOptions
    from persisting.engine.pending import Pending
    from persisting.engine.table import Table
    from persisting.engine.wal import WAL

__all__ = ["BlobLocation", "TableReads"]

_PACKED, _DEDICATED = 1, 2  # Lance blob v2 descriptor kinds kept in a .blob file of their own


@dataclass(frozen=True)
class BlobLocation:
    """Where a committed blob's bytes sit in a local file: ``size`` bytes from ``offset``."""

    path: str
    offset: int
    size: int


class TableReads:
    """Read methods of :class:`~persisting.engine.table.Table` (a mixin over its state)."""

    uri: str
    name: str
    options: TableOptions
    storage_options: dict[str, str] | None
    read_only: bool
    metrics: TableMetrics
    _lock: threading.RLock
    _closed: bool
    _ds: lance.LanceDataset | None
    _layout_cache: tuple[lance.LanceDataset | None, RowLayout] | None
    _schema: pa.Schema | None
    _pending: Pending
    _flushed_rows: int
    _applied: int
    _next_lsn: int
    _wal: WAL | None

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"table {self.uri} is closed; open it again to use it")
        self._follow()

    def _follow(self) -> None:
        """Pick up other writers' commits before a read (the Table overrides this)."""

    @property
    def schema(self) -> pa.Schema | None:
        """The table's schema: stored columns plus fields that pending rows added."""
        if not self._closed:
            self._follow()
        return self._schema

    def count(self, filter: str | None = None) -> int:
        """Rows in the table, committed and pending (matching the SQL ``filter`` if given)."""
        with self._lock:
            self._check_open()
            if filter is None:
                return self._flushed_rows + self._pending.rows
            with lance_errors(self.uri, "rows", filter=filter, schema=self._schema):
                n = self._ds.count_rows(filter=filter) if self._ds is not None else 0
                if self._pending and self._schema is not None:
                    n += self._pending.dataset(self._schema).count_rows(filter=filter)
            return n

    def __len__(self) -> int:
        return self.count()

    def _target(self, columns: list[str] | None) -> pa.Schema:
        assert self._schema is not None
        if columns is None:
            return self._schema
        missing = [c for c in columns if c not in self._schema.names]
        if missing:
            raise NotFoundError(f"table {self.uri} has no column {missing[0]!r}; it has {self._schema.names}")
        return pa.schema([self._schema.field(c) for c in columns])

    def scan(
        self,
        *,
        columns: list[str] | None = None,
        filter: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> pa.Table:
        """Rows in append order; ``filter`` is a SQL predicate, e.g. ``"score > 1"``."""
        with self._lock:
            self._check_open()
            if self._schema is None:
                return pa.table({})
            target = self._target(columns)
            if filter is None:
                return self._scan_positional(target, limit, offset)
            parts = []
            with lance_errors(self.uri, "rows", filter=filter, schema=self._schema):
                if self._ds is not None:
                    parts.append(_lance_scan(self._ds, target, filter))
                if self._pending:
                    parts.append(_lance_scan(self._pending.dataset(self._schema), target, filter))
            out = pa.concat_tables([conform(p, target) for p in parts]) if parts else target.empty_table()
            return out.slice(offset, limit) if (offset or limit is not None) else out

    def _scan_positional(self, target: pa.Schema, limit: int | None, offset: int) -> pa.Table:
        parts = []
        end = None if limit is None else offset + limit
        if self._ds is not None and offset < self._flushed_rows and (end is None or end > 0):
            n = None if end is None else min(end, self._flushed_rows) - offset
            with lance_errors(self.uri, "rows"):
                parts.append(_lance_scan(self._ds, target, None, limit=n, offset=offset or None))
        if self._pending:
            start = max(0, offset - self._flushed_rows)
            stop = None if end is None else max(0, end - self._flushed_rows)
            if stop is None or stop > start:
                if start == 0 and stop is None:  # all of it: the cached conformed table
                    assert self._schema is not None
                    parts.append(self._pending.table(self._schema).select(target.names))
                else:
                    parts.append(self._pending.range_table(target, start, stop))
        parts = [p if p.schema.equals(target, check_metadata=True) else conform(p, target) for p in parts]
        if len(parts) == 1:
            return parts[0]
        return pa.concat_tables(parts) if parts else target.empty_table()

    def take(self, positions: Sequence[int], *, columns: list[str] | None = None) -> pa.Table:
        """Rows by position (0 = first row), committed or pending, in the order asked."""
        with self._lock:
            self._check_open()
            total = self._flushed_rows + self._pending.rows
            for p in positions:
                if not 0 <= p < total:
                    raise NotFoundError(f"table {self.uri} has {total} rows; position {p} is out of range")
            if self._schema is None:
                return pa.table({})
            target = self._target(columns)
            flushed = [p for p in positions if p < self._flushed_rows]
            pending = [p - self._flushed_rows for p in positions if p >= self._flushed_rows]
            parts = []
            if flushed:
                with lance_errors(self.uri, f"rows at positions {flushed[:8]}"):
                    parts.append(conform(self._take_committed(flushed, target), target))
            if pending:
                rows = self._pending.table(self._schema).select(target.names)
                parts.append(rows.take(pa.array(pending, pa.int64())))
            out = pa.concat_tables(parts) if parts else target.empty_table()
            if flushed and pending and any(a > b for a, b in zip(positions, positions[1:])):
                # parts hold committed rows first; put every row back where it was asked for
                order = sorted(range(len(positions)), key=lambda i: positions[i] >= self._flushed_rows)
                inverse = [0] * len(order)
                for dst, src in enumerate(order):
                    inverse[src] = dst
                out = out.take(pa.array(inverse, pa.int64()))
            return out

    def _take_committed(self, positions: list[int], target: pa.Schema) -> pa.Table:
        """Take rows from Lance; blob columns come through ``take_blobs`` as bytes."""
        assert self._ds is not None
        stored = self._ds.schema
        cols = [c for c in target.names if c in stored.names]
        blob_cols = {c for c in cols if is_blob(stored.field(c))}
        plain = [c for c in cols if c not in blob_cols]
        if blob_cols:
            integrity.check_blob_files(self.uri, self._ds)
        taken = self._ds.take(positions, columns=plain) if plain else None
        arrays, fields = [], []
        for c in cols:
            if c in blob_cols:
                values = [None if b is None else read_blob(b) for b in self._ds.take_blobs(c, indices=positions)]
                self.metrics.bytes_read.inc(sum(len(v) for v in values if v is not None))
                arrays.append(pa.array(values, pa.large_binary()))
                fields.append(pa.field(c, pa.large_binary(), metadata=BLOB_METADATA))
            else:
                assert taken is not None
                arrays.append(taken.column(c))
                fields.append(taken.schema.field(c))
        if not arrays:
            return pa.table({"_": pa.nulls(len(positions))}).drop(["_"])
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def read_blobs(self, column: str, positions: Sequence[int]) -> list[bytes | None]:
        """Bytes of a blob column for the rows at ``positions``: committed rows are read once,
        straight from Lance's blob files into ``bytes`` (no Arrow copy in between)."""
        with self._lock:
            self._check_open()
            ds = self._ds
            if ds is None or column not in ds.schema.names or not is_blob(ds.schema.field(column)) or any(
                not 0 <= p < self._flushed_rows for p in positions
            ):
                return self.take(positions, columns=[column]).column(column).to_pylist()
        integrity.check_blob_files(self.uri, ds)
        with lance_errors(self.uri, f"blob column {column!r} at positions {list(positions)[:8]}"):
            out = [None if b is None else read_blob(b) for b in ds.take_blobs(column, indices=list(positions))]
        self.metrics.bytes_read.inc(sum(len(v) for v in out if v is not None))
        return out

    def open_blobs(self, column: str, positions: Sequence[int], *, buffer_size: int = 8 << 20) -> list[Any]:
        """File-like handles (``read``/``readinto``, context managers) on a blob column's values:
        Lance blob files for committed rows, in-memory files for pending ones. For large
        payloads read straight into the caller's buffers, without intermediate copies."""
        with self._lock:
            self._check_open()
            ds = self._ds
            committed = ds is not None and column in ds.schema.names and is_blob(ds.schema.field(column))
            if not committed or any(not 0 <= p < self._flushed_rows for p in positions):
                return [io.BytesIO(b or b"") for b in self.read_blobs(column, positions)]
        assert ds is not None
        with lance_errors(self.uri, f"blob column {column!r} at positions {list(positions)[:8]}"):
            blobs = list(ds.take_blobs(column, indices=list(positions), buffer_size=buffer_size))
        return [b if b is None else GuardedBlob(b, self.uri, column, p) for b, p in zip(blobs, positions)]

    def blob_locations(self, column: str, positions: Sequence[int]) -> list[BlobLocation | None]:
        """The file, offset and size of each committed blob at ``positions`` (Lance blob v2 keeps
        large payloads in ``data/<data file>/<reversed id>.blob``), so payload reads can go to
        the file directly. None where no such file exists: remote tables, pending rows, nulls,
        blobs Lance kept inline in its data file, or anything this layout does not cover. The
        files may vanish once another writer's cleanup removed this version: a reader treats
        a missing file as a stale view, never as data."""
        positions = list(positions)
        out: list[BlobLocation | None] = [None] * len(positions)
        with self._lock:
            self._check_open()
            ds = self._ds
            if ds is None or not is_local(self.uri) or column not in ds.schema.names or not is_blob(
                ds.schema.field(column)
            ):
                return out
            asked = [(i, p) for i, p in enumerate(positions) if 0 <= p < self._flushed_rows]
            if not asked:
                return out
            with lance_errors(self.uri, f"blob column {column!r} at positions {[p for _, p in asked][:8]}"):
                taken = ds.take([p for _, p in asked], columns=[column, "_rowaddr"])
                field_id = ds.lance_schema.field(column).id()
                files = {}
                for frag in ds.get_fragments():
                    for f in frag.metadata.files:
                        if field_id in f.fields and f.base_id is None:
                            files[frag.fragment_id] = f.path
        root = local_path(self.uri)
        descs = taken.column(column).to_pylist()
        addrs = taken.column("_rowaddr").to_pylist()
        for (i, _), d, addr in zip(asked, descs, addrs):
            if not isinstance(d, dict) or d.get("kind") not in (_PACKED, _DEDICATED) or d.get("blob_uri"):
                continue
            data_file = files.get(addr >> 32)
            if data_file is None:
                continue
            name = format(int(d["blob_id"]), "032b")[::-1] + ".blob"
            path = os.path.join(root, "data", data_file.removesuffix(".lance"), name)
            out[i] = BlobLocation(path, int(d["position"]), int(d["size"]))
        return out

    def iter_batches(
        self, *, columns: list[str] | None = None, filter: str | None = None, batch_rows: int = 65536
    ) -> Iterator[pa.RecordBatch]:
        """Stream rows in batches (committed first) without loading the table at once."""
        with self._lock:
            self._check_open()
            if self._schema is None:
                return
            target = self._target(columns)
            ds = self._ds
            schema = self._schema
            pending = None
            if self._pending:
                with lance_errors(self.uri, "rows", filter=filter, schema=schema):
                    pending = (
                        self._pending.table(self._schema) if filter is None
                        else self._pending.dataset(self._schema).to_table(filter=filter)
                    )
        if ds is not None:
            cols = [c for c in target.names if c in ds.schema.names]
            if any(is_blob(ds.schema.field(c)) for c in cols):
                integrity.check_blob_files(self.uri, ds)
            with lance_errors(self.uri, "rows", filter=filter, schema=schema):
                scanner = ds.scanner(columns=cols, filter=filter, batch_size=batch_rows, scan_in_order=True,
                                     blob_handling="all_binary")
                batches = iter(scanner.to_batches())
            while True:
                with lance_errors(self.uri, "rows", filter=filter, schema=schema):
                    b = next(batches, None)
                if b is None:
                    break
                yield from conform(b, target).to_batches()
        if pending is not None:
            yield from conform(pending, target).to_batches(max_chunksize=batch_rows)

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """Hold this handle's view still until the block ends: none of its own background
        commits lands (and, with ``follow=False``, nothing moves at all), so positions read
        inside (``count``, :meth:`row_layout`, ``scan``) stay valid for ``take`` inside.
        Do not append or flush inside: a full buffer may wait for the commit held back."""
        with self._lock:
            yield

    def row_layout(self) -> RowLayout:
        """Where the committed rows of the current version sit (see :mod:`~persisting.engine.rowlayout`):
        callers that index rows by position compare layouts to learn whether other writers only
        appended (positions kept) or deleted/compacted (positions must be read again)."""
        with self._lock:
            self._check_open()
            ds = self._ds
            version = ds.version if ds is not None else 0
            cached = self._layout_cache
            # a version's layout never changes: listing its fragments again (~150 us for a few
            # hundred fragments) bought nothing for a reader that polls after every write. Keyed
            # by the dataset object and its version (Lance moves a dataset's version in place, e.g. add_columns)
            if cached is not None and cached[0] is ds and cached[1].version == version:
                return cached[1]
            layout = row_layout(ds)
            self._layout_cache = (ds, layout)
            return layout

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
        """Highest LSN acknowledged by ``append``."""
        return self._next_lsn - 1

    def versions(self) -> list[dict[str, Any]]:
        """Lance versions: ``version``, ``timestamp``, ``metadata``."""
        with self._lock:
            self._check_open()
            return [] if self._ds is None else [dict(v) for v in self._ds.versions()]

    def tags(self) -> dict[str, int]:
        """Tag name -> version."""
        with self._lock:
            self._check_open()
            return {} if self._ds is None else {k: v["version"] for k, v in self._ds.tags.list().items()}

    def checkout(self, version: int | str) -> Table:
        """A read-only Table of an old version (a number or a tag)."""
        from persisting.engine.table import Table

        self._check_open()
        return Table(self.uri, version=version, storage_options=self.storage_options, name=self.name)

    def stats(self) -> dict[str, Any]:
        """Rows (committed, pending), version, LSNs, WAL size, fragments."""
        with self._lock:
            return {
                "uri": self.uri,
                "rows": self._flushed_rows + self._pending.rows,
                "flushed_rows": self._flushed_rows,
                "buffered_rows": self._pending.rows,
                "version": self.version,
                "applied_lsn": self._applied,
                "last_lsn": self._next_lsn - 1,
                "wal_size_bytes": self._wal.size_bytes if self._wal is not None else 0,
                "fragments": len(self._ds.get_fragments()) if self._ds is not None else 0,
                "durability": self.options.durability,
                "read_only": self.read_only,
            }


def _lance_scan(
    ds: lance.LanceDataset, target: pa.Schema, filter: str | None,
    limit: int | None = None, offset: int | None = None,
) -> pa.Table:
    cols = [c for c in target.names if c in ds.schema.names]
    if any(is_blob(ds.schema.field(c)) for c in cols) and ds.uri and not ds.uri.startswith("memory://"):
        integrity.check_blob_files(ds.uri, ds)
    return ds.scanner(
        columns=cols, filter=filter, limit=limit, offset=offset, scan_in_order=True, blob_handling="all_binary",
    ).to_table()
