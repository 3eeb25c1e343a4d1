"""StepView: the derived, in-memory view of the steps table that sampling and lookups use.

Lance's random ``take`` costs milliseconds per batch (3-13 ms for 256 rows of 10M); a numpy
gather costs microseconds. So each store handle keeps, in memory, the fixed-width step columns
(numeric and bool scalars, fixed-shape arrays up to :data:`MAX_CACHED_BYTES` per step) in row
order, plus the :class:`~persisting.trajectory.index.StepIndex` over ``(episode_id, step)``.

It is derived, never the source of truth: every read first catches the view up with the table
as pinned now. Unchanged version and row count: nothing to do. Other writers only appended
(the row layout keeps every old fragment in front): only the new rows are scanned (keys and
cached columns, one columnar scan). Anything else (a delete, a compaction, a new or widened
cached column): the view is rebuilt from one columnar scan of the table, 0.6 s for 10M steps
of a 4-float observation here. The handle's own pending rows (handed to the table, not yet
committed) sit after the committed ones in the same buffers; only those added since the last
read are read (all of them again after a commit). The view lives in memory, so it can never
disagree with what other writers committed and works for stores on object storage; a writer's
:meth:`~persisting.trajectory.TrajectoryStore.compact` also saves it beside the tables
(:mod:`~persisting.trajectory.viewfile`), so a handle that opens a large store maps it instead of
rebuilding it (10M steps: ~0.1 s against 0.6-2 s).

Wider or variable-width fields (strings, token lists, images/blob tensors) stay in Lance and are
fetched for the sampled rows only, in one ``take`` per call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from persisting.engine import RowLayout, Table
from persisting.engine.durable import is_local, local_path
from persisting.trajectory.fields import FieldSpec
from persisting.trajectory import viewfile
from persisting.trajectory.index import StepIndex, step_keys

__all__ = ["MAX_CACHED_BYTES", "CommitProbe", "StepView", "cacheable"]

MAX_CACHED_BYTES = 1024
"""Fixed-shape fields wider than this per step are not held in memory (they are read from
Lance for the rows a sample needs)."""

_SCALAR_DTYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_}


def cacheable(spec: FieldSpec) -> bool:
    """Is this field held in the in-memory view?"""
    if spec.kind == "scalar":
        return spec.dtype in _SCALAR_DTYPES
    if spec.kind == "fixed":
        return np.dtype(spec.dtype).itemsize * int(np.prod(spec.shape, dtype=np.int64)) <= MAX_CACHED_BYTES
    return False


class _Column:
    """One cached field: committed values in row order, then this handle's pending rows, in one
    buffer grown by doubling, and a validity mask (None: every row is valid). A sample gathers
    committed and pending rows alike with one fancy index."""

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec
        dtype = _SCALAR_DTYPES[spec.dtype] if spec.kind == "scalar" else np.dtype(spec.dtype)
        self.shape = spec.shape if spec.kind == "fixed" else ()
        self.values = np.empty((0, *self.shape), dtype)
        self.valid: np.ndarray | None = None  # None: every row so far is valid
        self.rows = 0  # committed rows
        self.prows = 0  # pending rows after them

    def adopt(self, values: np.ndarray, valid: np.ndarray | None) -> None:
        """Start from these (read-only, e.g. memory-mapped) rows; a later write copies."""
        self.values, self.valid, self.rows, self.prows = values, valid, len(values), 0

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` committed rows (pending ones are read again); arrays not ours
        to write (adopted, read-only) are cut to them, so the next write copies."""
        self.rows, self.prows = rows, 0
        if not self.values.flags.writeable:
            self.values = self.values[:rows]
        if self.valid is not None and not self.valid.flags.writeable:
            self.valid = self.valid[:rows]

    def extend(self, values: np.ndarray, valid: np.ndarray | None) -> None:
        """Committed rows after the committed ones (pending rows are dropped: read them again)."""
        if self.rows == 0 and valid is None:  # a rebuild: adopt the array (a later write copies)
            self.values, self.valid, self.rows, self.prows = values, None, len(values), 0
            return
        self._write(self.rows, values, valid)
        self.rows += len(values)
        self.prows = 0

    def put_pending(self, at: int, values: np.ndarray, valid: np.ndarray | None) -> None:
        """Pending rows ``at..`` (earlier pending rows kept, later ones replaced)."""
        self._write(self.rows + at, values, valid)
        self.prows = at + len(values)

    def _write(self, start: int, values: np.ndarray, valid: np.ndarray | None) -> None:
        end = start + len(values)
        if end > len(self.values) or not self.values.flags.writeable:
            grown = np.empty((max(end, 2 * len(self.values), 1024), *self.shape), self.values.dtype)
            k = min(start, len(self.values))
            grown[:k] = self.values[:k]
            self.values = grown
        self.values[start:end] = values
        if valid is not None or self.valid is not None:
            mask = self.valid
            if mask is None or len(mask) < len(self.values) or not mask.flags.writeable:
                mask = np.ones(len(self.values), np.bool_)
                if self.valid is not None:
                    k = min(start, len(self.valid))
                    mask[:k] = self.valid[:k]
                self.valid = mask
            mask[start:end] = True if valid is None else valid


def _concat(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and validity (None: all valid) of row runs one after another."""
    if len(parts) == 1:
        return parts[0]
    values = np.concatenate([v for v, _ in parts])
    if all(m is None for _, m in parts):
        return values, None
    return values, np.concatenate([np.ones(len(v), np.bool_) if m is None else m for v, m in parts])


def _column_values(col: pa.ChunkedArray, spec: FieldSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """Values and validity (None: all valid) of one scanned column of a cached field."""
    if not col.chunks:
        return _arrow_values(pa.array([], col.type), spec)
    return _concat([_arrow_values(chunk, spec) for chunk in col.chunks])


def _arrow_values(arr: pa.Array, spec: FieldSpec) -> tuple[np.ndarray, np.ndarray | None]:
    valid = np.asarray(arr.is_valid()) if arr.null_count else None
    n = len(arr)
    if spec.kind == "fixed":
        size = int(np.prod(spec.shape, dtype=np.int64))
        flat = arr.values.slice(arr.offset * size, n * size).to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.dtype(spec.dtype)).reshape((n, *spec.shape)), valid
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(False if spec.dtype == "bool" else 0, arr.type))
    values = arr.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=_SCALAR_DTYPES[spec.dtype]), valid


_QUIET_NS = 50_000_000  # a directory unchanged for this long cannot change within its mtime tick


class CommitProbe:
    """Has anyone committed to a local table since the last look? One ``stat`` of its
    ``_versions`` directory (every commit adds a manifest there), against Lance's manifest
    listing (~10 us idle, 80+ us on a loaded machine) on every read.

    A directory's mtime moves in coarse kernel ticks, so a commit landing in the same tick as
    the one last seen could leave it unchanged: an mtime that recent is never trusted (the
    caller asks Lance). Remote tables always ask Lance.
    """

    def __init__(self, uri: str) -> None:
        self.path = os.path.join(local_path(uri), "_versions") if is_local(uri) else None
        self.seen: int | None = None

    def changed(self) -> bool:
        """True unless the directory provably did not change since the last call that returned
        True (call the table's refresh after a True)."""
        if self.path is None:
            return True
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            self.seen = None
            return True
        if mtime == self.seen:
            return False
        self.seen = mtime if time.time_ns() - mtime > _QUIET_NS else None
        return True


class StepView:
    """Step keys and fixed-width columns of one steps table, caught up by :meth:`refresh`.
    ``saved``: the directory of views saved beside the table (:mod:`~persisting.trajectory.viewfile`),
    tried before a rebuild from Lance."""

    def __init__(self, saved: str | None = None) -> None:
        self.saved = saved
        self.loads = 0  # views taken from saved files
        self.index = StepIndex()
        self.layout: RowLayout | None = None
        self.version = -1
        self.total = -1
        self.cached: tuple[tuple[str, tuple[str, str, tuple[int, ...]]], ...] = ()
        self.columns: dict[str, _Column] = {}
        self._pending_keys: list[np.ndarray] = []  # keys of this handle's pending rows, in row order, in parts
        self.rebuilds = 0  # full reads of the table (tests and stats look at it)
        self.partial_rebuilds = 0  # re-reads of the rows after unchanged leading fragments
        self._seen: tuple[object, list[FieldSpec]] = (None, [])  # schema and specs ``cached`` was computed for

    @property
    def committed(self) -> int:
        return self.layout.rows if self.layout is not None else 0

    def refresh(self, table: Table, specs: Mapping[str, FieldSpec]) -> None:
        """Catch up with ``table`` as it is pinned now (committed rows of every writer, then
        this handle's pending rows). Call it with the table pinned."""
        total = table.count()
        schema = table.schema
        seen_schema, seen_specs = self._seen
        if schema is seen_schema and len(specs) == len(seen_specs) and all(a is b for a, b in zip(specs.values(), seen_specs)):
            cached = self.cached
        else:
            stored = set(schema.names) if schema is not None else set()
            cached = tuple(sorted((n, s.signature) for n, s in specs.items() if n in stored and cacheable(s)))
            self._seen = (schema, list(specs.values()))
        version = table.version
        if version == self.version and total == self.total and cached == self.cached:
            return
        layout = table.row_layout()
        kept = self.layout.kept_rows(layout) if self.layout is not None and cached == self.cached else None
        if kept is None and self.layout is not None and cached == self.cached:
            # rows moved (a compaction, a delete): those in the unchanged leading fragments kept
            # their positions, so only the rows after them are read again
            prefix = self.layout.prefix_rows(layout)
            if prefix:
                for col in self.columns.values():
                    col.truncate(prefix)
                self.index.truncate_committed(prefix)
                kept = prefix
                self.partial_rebuilds += 1
        if kept is None:  # first read, no leading fragment kept, or the cached columns changed
            kept = 0
            self.index.reset()
            self.columns = {name: _Column(specs[name]) for name, _ in cached}
            found = viewfile.load(self.saved, layout, cached) if self.saved is not None and self.layout is None else None
            if found is not None:
                saved, keys, positions, columns = found
                self.index.adopt_committed(keys, positions)
                for name, (values, valid) in columns.items():
                    self.columns[name].adopt(values, valid)
                kept = saved.rows
                self.loads += 1
            else:
                self.rebuilds += 1
        if layout.rows > kept:
            keys = self._read(table, kept, layout.rows - kept)
            self.index.add_committed(keys, kept)
        if (self.layout is not None and version == self.version and cached == self.cached
                and layout.rows == self.layout.rows and kept == layout.rows and total > self.total):
            # only more pending rows since the last read (they only grow until a commit): read those
            more = self._read(table, self.total, total - self.total, pending_at=self.total - layout.rows)
            self._pending_keys.append(more)
            if not self.index.extend_pending(more, self.total):
                self.index.set_pending(np.concatenate(self._pending_keys), layout.rows)
        else:
            for col in self.columns.values():
                col.prows = 0
            self._pending_keys = ([self._read(table, layout.rows, total - layout.rows, pending_at=0)]
                                  if total > layout.rows else [])
            self.index.set_pending(self._pending_keys[0] if self._pending_keys else np.empty(0, np.int64), layout.rows)
        self.layout, self.version, self.total, self.cached = layout, version, total, cached

    def _read(self, table: Table, offset: int, n: int, *, pending_at: int | None = None) -> np.ndarray:
        """Keys of rows ``offset..offset+n``; their cached columns go after the committed rows
        (``pending_at`` None) or at pending row ``pending_at``."""
        names = list(self.columns)
        data = table.scan(columns=["episode_id", "step", *names], offset=offset, limit=n)
        for name in names:
            values, valid = _column_values(data.column(name), self.columns[name].spec)
            if pending_at is None:
                self.columns[name].extend(values, valid)
            else:
                self.columns[name].put_pending(pending_at, values, valid)
        return step_keys(data.column("episode_id").to_numpy(), data.column("step").to_numpy())  # one copy each

    def save(self) -> str | None:
        """Save the committed part beside the table (see :mod:`~persisting.trajectory.viewfile`)."""
        if self.saved is None or self.layout is None:
            return None
        n = self.layout.rows
        columns = {name: (col.values[:n], None if col.valid is None else col.valid[:n]) for name, col in self.columns.items()}
        return viewfile.save(self.saved, self.layout, self.cached, self.index.ckeys, self.index.cpositions, columns)

    def has(self, name: str) -> bool:
        return name in self.columns

    def valid(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Which rows at these positions hold a value for the field."""
        col = self.columns[name]
        return np.ones(len(positions), np.bool_) if col.valid is None else col.valid.take(positions)

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        """The field's values at these row positions, decoded as the Lance path decodes them
        (missing values: NaN for floats; numeric scalars with a missing value become float)."""
        col = self.columns[name]
        # committed and pending rows share the buffer; ``take`` along axis 0, not ``values[positions]``:
        # numpy's fancy indexing of a 2-D array cost 32 us for 512 rows of 10M, take 6 us
        values = col.values.take(positions, axis=0)
        valid = None if col.valid is None else col.valid.take(positions)
        if valid is None or valid.all():
            return values
        if col.spec.kind == "fixed":
            if values.dtype.kind == "f":
                values[~valid] = np.nan
            return values
        return pa.array(values, mask=~valid).to_numpy(zero_copy_only=False)
