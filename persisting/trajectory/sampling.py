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
committed) are read again whenever they change. The view lives in memory, so it can never
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
    """One cached field: values in row order (grown by doubling) and a validity mask."""

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec
        dtype = _SCALAR_DTYPES[spec.dtype] if spec.kind == "scalar" else np.dtype(spec.dtype)
        self.shape = spec.shape if spec.kind == "fixed" else ()
        self.values = np.empty((0, *self.shape), dtype)
        self.valid: np.ndarray | None = None  # None: every row so far is valid
        self.rows = 0

    def adopt(self, values: np.ndarray, valid: np.ndarray | None) -> None:
        """Start from these (read-only, e.g. memory-mapped) rows; a later extend copies."""
        self.values, self.valid, self.rows = values, valid, len(values)

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` rows; arrays not ours to write (adopted, read-only) are cut
        to them, so the next extend copies instead of writing into them."""
        self.rows = rows
        if not self.values.flags.writeable:
            self.values = self.values[:rows]
        if self.valid is not None and not self.valid.flags.writeable:
            self.valid = self.valid[:rows]

    def extend(self, values: np.ndarray, valid: np.ndarray | None) -> None:
        n = len(values)
        if self.rows == 0 and valid is None:  # a rebuild: adopt the array (a later extend copies)
            self.values, self.valid, self.rows = values, None, n
            return
        if self.rows + n > len(self.values):
            grown = np.empty((max(self.rows + n, 2 * len(self.values), 1024), *self.shape), self.values.dtype)
            grown[: self.rows] = self.values[: self.rows]
            self.values = grown
        self.values[self.rows : self.rows + n] = values
        if valid is not None or self.valid is not None:
            if self.valid is None or len(self.valid) < len(self.values):
                mask = np.ones(len(self.values), np.bool_)
                if self.valid is not None:
                    mask[: self.rows] = self.valid[: self.rows]
                self.valid = mask
            self.valid[self.rows : self.rows + n] = True if valid is None else valid
        self.rows += n


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
        self.pending: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        self._pending_keys = np.empty(0, np.int64)  # keys of this handle's pending rows, in row order
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
            keys = self._read(table, kept, layout.rows - kept, into_columns=True)
            self.index.add_committed(keys, kept)
        if (self.layout is not None and version == self.version and cached == self.cached
                and layout.rows == self.layout.rows and kept == layout.rows and total > self.total):
            # only more pending rows since the last read (they only grow until a commit): read those
            more = self._read(table, self.total, total - self.total, into_columns=False)
            self._pending_keys = np.concatenate([self._pending_keys, more])
        else:
            self.pending = {}
            self._pending_keys = (self._read(table, layout.rows, total - layout.rows, into_columns=False)
                                  if total > layout.rows else np.empty(0, np.int64))
        self.index.set_pending(self._pending_keys, layout.rows)
        self.layout, self.version, self.total, self.cached = layout, version, total, cached

    def _read(self, table: Table, offset: int, n: int, *, into_columns: bool) -> np.ndarray:
        names = list(self.columns)
        data = table.scan(columns=["episode_id", "step", *names], offset=offset, limit=n)
        for name in names:
            values, valid = _column_values(data.column(name), self.columns[name].spec)
            if into_columns:
                self.columns[name].extend(values, valid)
            elif name in self.pending:  # more pending rows after those read before
                self.pending[name] = _concat([self.pending[name], (values, valid)])
            else:
                self.pending[name] = (values, valid)
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
        inside = positions < col.rows
        out = np.ones(len(positions), np.bool_)
        if col.valid is not None:
            out[inside] = col.valid[positions[inside]]
        pvalid = self.pending.get(name, (None, None))[1]
        if pvalid is not None and not inside.all():
            out[~inside] = pvalid[positions[~inside] - col.rows]
        return out

    def gather(self, name: str, positions: np.ndarray) -> np.ndarray:
        """The field's values at these row positions, decoded as the Lance path decodes them
        (missing values: NaN for floats; numeric scalars with a missing value become float)."""
        col = self.columns[name]
        c = col.rows
        inside = positions < c
        if inside.all():
            values = col.values[positions]
            valid = None if col.valid is None else col.valid[positions]
        else:
            pvalues, pvalid = self.pending[name]
            values = np.empty((len(positions), *col.shape), col.values.dtype)
            values[inside] = col.values[positions[inside]]
            values[~inside] = pvalues[positions[~inside] - c]
            valid = np.ones(len(positions), np.bool_)
            if col.valid is not None:
                valid[inside] = col.valid[positions[inside]]
            if pvalid is not None:
                valid[~inside] = pvalid[positions[~inside] - c]
        if valid is None or valid.all():
            return values
        if col.spec.kind == "fixed":
            if values.dtype.kind == "f":
                values[~valid] = np.nan
            return values
        return pa.array(values, mask=~valid).to_numpy(zero_copy_only=False)
