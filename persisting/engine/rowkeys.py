"""Row identity: which row position holds which key, kept current as any writer changes the table.

Lance addresses rows by position, and positions hold only for one row layout: appends (by this
or any other writer) add positions at the end, while deletes and compaction move them. Stores
that find rows by key (KV chunk keys, checkpoint chunk hashes) keep a map from key to position;
this module keeps that map in step without rescanning the table on every change:

- :class:`RowFollower` compares the table's :class:`~persisting.engine.rowlayout.RowLayout` with
  the one it last read and returns a :class:`RowChange`: only the rows appended since (when the
  layout merely grew) or every row again (after deletes, compaction, or a reordering race).
  With ``track_moves`` a delete costs only the fragments it touched: the change says how the
  positions read before shift and holds the rows of those fragments (a KV cache at capacity
  deletes on every put; reading every key again made each put O(table)).
  Stores with their own index (the KV cache's LRU tree) fold the change in themselves.
- :class:`RowKeys` is a follower plus the key -> position map and per-key values of small columns.
- :func:`in_predicates` builds ``column IN (...)`` predicates, quoted once and chunked, for
  :meth:`Table.delete_in <persisting.engine.table.Table.delete_in>`.

Rows still buffered in the writer (not committed) are part of a change; a follower that saw
them reads every row again next time, since their positions are only settled by the commit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from persisting.engine.rowlayout import Move, RowLayout, moves
from persisting.errors import InvalidRecordError, NotFoundError

if TYPE_CHECKING:
    from persisting.engine.table import Table

__all__ = ["IN_CHUNK", "RowChange", "RowFollower", "RowKeys", "delete_chunks", "in_predicates"]

IN_CHUNK = 1000  # values per IN (...) predicate: long lists become several deletes


@dataclass(frozen=True)
class RowChange:
    """Rows read from the table: row ``i`` of ``rows`` sits at position ``start + i``.

    ``replaced``: ``rows`` are the whole table (positions moved; anything not in them is gone);
    otherwise they were appended after every row read before.
    """

    start: int
    rows: pa.Table
    replaced: bool
    # with ``RowFollower(track_moves=True)``, after rows were deleted in place: where the rows
    # read before went (see :func:`~persisting.engine.rowlayout.moves`), and the position of
    # each row of ``rows`` (the rows of fragments deleted from, and every row appended since)
    moves: tuple[Move, ...] | None = None
    positions: np.ndarray | None = None

    def column(self, name: str) -> list[Any]:
        return self.rows.column(name).to_pylist() if self.rows.num_rows else []

    def position(self, i: int) -> int:
        """The table position of row ``i`` of ``rows``."""
        return self.start + i if self.positions is None else int(self.positions[i])


_MAX_REREADS = 32  # fragments deleted from, read one by one; more and the whole table is read


class RowFollower:
    """Reads what changed in ``table`` (only ``columns``) since the last :meth:`changes`.

    ``track_moves``: after rows were deleted in place (an eviction), return where the rows read
    before went and read only the fragments deleted from and what was appended, instead of every
    row (for a caller that can shift its positions: :attr:`RowChange.moves`).
    """

    def __init__(self, table: Table, columns: Sequence[str], *, track_moves: bool = False) -> None:
        self.table = table
        self.columns = list(columns)
        self.track_moves = track_moves
        self._seen: RowLayout | None = None  # layout of the committed rows read so far
        self._dirty = True  # the last read included uncommitted rows (or none happened)
        self._full = True  # the next read is of every row

    def invalidate(self) -> None:
        """Read every row at the next :meth:`changes` (e.g. after a write that failed midway)."""
        self._dirty = self._full = True

    @property
    def version(self) -> int | None:
        """The table version the last read was complete for (None: the next read is a full one),
        so a caller can skip :meth:`changes` while the table has not moved."""
        return None if self._dirty or self._seen is None else self._seen.version

    def changes(self) -> RowChange | None:
        """What changed since the last call, or None when nothing did."""
        t = self.table
        with t.pinned():
            while True:  # a handle that follows may move between reads: until one layout holds
                layout = t.row_layout()
                pending = t.count() - layout.rows
                if layout == self._seen and not self._dirty and not pending:
                    return None
                kept = None if self._seen is None or self._dirty else self._seen.kept_rows(layout)
                change = None
                if kept is None and self.track_moves and not self._full and self._seen is not None and t.schema is not None:
                    change = self._moved(layout)
                if change is None:
                    if t.schema is None:
                        rows = pa.table({c: pa.array([], pa.null()) for c in self.columns})
                    else:
                        rows = t.scan(columns=self.columns, offset=kept or 0)
                    change = RowChange(kept or 0, rows, kept is None)
                if t.row_layout() == layout:
                    break
        self._seen, self._dirty, self._full = layout, pending > 0, False
        return change

    def _moved(self, layout: RowLayout) -> RowChange | None:
        """The change as moves plus the rows of fragments deleted from and those appended since
        (every row from the end of the old fragments on, pending ones too); None when rows moved
        otherwise or too many fragments changed."""
        assert self._seen is not None
        found = moves(self._seen, layout)
        if found is None or len(found[1]) > _MAX_REREADS:
            return None
        segments, reread, tail = found
        # rows read before past the old fragments (pending then) are in the tail now
        segments.append((self._seen.rows, 1 << 62, None))
        parts, positions = [], []
        for begin, n in reread:
            if n > 0:
                parts.append(self.table.scan(columns=self.columns, offset=begin, limit=n))
                positions.append(np.arange(begin, begin + n, dtype=np.int64))
        rest = self.table.scan(columns=self.columns, offset=tail)
        parts.append(rest)
        positions.append(np.arange(tail, tail + rest.num_rows, dtype=np.int64))
        rows = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        return RowChange(0, rows, False, tuple(segments), np.concatenate(positions))


class RowKeys:
    """key -> position of the first row holding it, plus the values of ``values`` columns per
    key, for one table; :meth:`sync` brings it to the table's current rows."""

    def __init__(self, table: Table, column: str, values: Sequence[str] = ()) -> None:
        self.column = column
        self.value_columns = list(values)
        self._follow = RowFollower(table, [column, *values])
        self._positions: dict[Any, int] = {}
        self._values: dict[str, dict[Any, Any]] = {c: {} for c in values}
        self.sync()

    def sync(self) -> bool:
        """Follow the table's changes; return whether the map changed."""
        change = self._follow.changes()
        if change is None:
            return False
        keys = change.column(self.column)
        if change.replaced:
            self._positions = {}
            self._values = {c: {} for c in self.value_columns}
        for i, k in enumerate(keys):
            self._positions.setdefault(k, change.start + i)
        for c in self.value_columns:
            own = self._values[c]
            for k, v in zip(keys, change.column(c)):
                own.setdefault(k, v)
        return True

    def invalidate(self) -> None:
        self._follow.invalidate()

    def position(self, key: Any) -> int | None:
        return self._positions.get(key)

    def value(self, column: str, key: Any, default: Any = None) -> Any:
        return self._values[column].get(key, default)

    def values(self, column: str) -> dict[Any, Any]:
        """key -> value of ``column`` (a live view: do not modify)."""
        return self._values[column]

    def __contains__(self, key: object) -> bool:
        return key in self._positions

    def __len__(self) -> int:
        return len(self._positions)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._positions)


def quote_identifier(column: str) -> str:
    """A column name as a SQL identifier Lance accepts (backticks, doubled inside)."""
    return "`" + column.replace("`", "``") + "`"


def _literal(value: Any, type_: pa.DataType, column: str) -> str:
    if value is None:
        raise InvalidRecordError(f"delete_in on column {column!r}: None cannot be matched by IN; pass only values")
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        if not isinstance(value, str):
            raise InvalidRecordError(f"delete_in on string column {column!r} got {type(value).__name__} {value!r}; pass str values")
        if "\x00" in value:
            raise InvalidRecordError(f"delete_in on column {column!r}: value {value!r} holds a NUL character")
        return "'" + value.replace("'", "''") + "'"
    if pa.types.is_boolean(type_):
        if not isinstance(value, bool):
            raise InvalidRecordError(f"delete_in on bool column {column!r} got {type(value).__name__} {value!r}")
        return "true" if value else "false"
    if pa.types.is_integer(type_):
        if isinstance(value, bool) or not isinstance(value, int):
            try:
                import numpy as np

                ok = isinstance(value, np.integer)
            except ImportError:  # pragma: no cover - numpy is a dependency
                ok = False
            if not ok:
                raise InvalidRecordError(f"delete_in on integer column {column!r} got {type(value).__name__} {value!r}")
        return str(int(value))
    if pa.types.is_floating(type_):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRecordError(f"delete_in on float column {column!r} got {value!r}; pass finite numbers")
        return repr(float(value))
    raise InvalidRecordError(
        f"delete_in on column {column!r} of type {type_}: only string, integer, float and bool columns can be matched"
    )


def in_predicates(schema: pa.Schema | None, column: str, values: Iterable[Any], *, chunk: int = IN_CHUNK) -> list[str]:
    """``column IN (...)`` predicates covering ``values`` (deduplicated), at most ``chunk`` values
    each, literals typed by the column's type and quoted once; bad values raise before any
    predicate is built."""
    values = list(values)
    if not values:
        return []
    if schema is None or column not in schema.names:
        raise NotFoundError(f"delete_in: the table has no column {column!r}" + ("" if schema is None else f"; it has {schema.names}"))
    type_ = schema.field(column).type
    literals = list(dict.fromkeys(_literal(v, type_, column) for v in values))
    ident = quote_identifier(column)
    return [f"{ident} IN ({', '.join(literals[i : i + chunk])})" for i in range(0, len(literals), chunk)]


def delete_chunks(ds: Any, predicates: Sequence[str], done: list[int]) -> int:
    """Run each predicate's delete on ``ds`` in turn, counting deleted rows into ``done[0]``
    (kept across retries of a lost commit race, where earlier chunks then delete nothing)."""
    for p in predicates:
        result = ds.delete(p)
        done[0] += int(result.get("num_deleted_rows", 0)) if isinstance(result, dict) else 0
    return done[0]
