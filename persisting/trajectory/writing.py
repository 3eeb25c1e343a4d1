"""EpisodeWriter: the narrow interface an open :class:`~persisting.trajectory.Episode` writes
through, so the episode needs nothing else of its store.

It holds the store's lock, its field registry and its two tables, and hands rows to them:
steps (``episode_id``, ``step`` and the step columns) and episode revisions. The store gives it
the checks only the store can make (is it writable, is this metadata compatible) and learns
when an episode ends.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from persisting.engine import Table
from persisting.trajectory.fields import stacked_to_columns
from persisting.engine.schema import records_to_batch
from persisting.trajectory.registry import FieldRegistry
from persisting.trajectory.schema import EPISODE_SCHEMA, STATUSES

if TYPE_CHECKING:
    from persisting.trajectory.episode import Episode

__all__ = ["EpisodeWriter"]

_KEY_FIELDS = [pa.field("episode_id", pa.int64(), nullable=False), pa.field("step", pa.int64(), nullable=False)]


_TIME = EPISODE_SCHEMA.field("start_time").type
_NULL_FLOAT = pa.nulls(1, pa.float64())
_NULL_TIME = pa.nulls(1, _TIME)
_STATUS = {s: pa.array([s], pa.string()) for s in STATUSES}


_REV = (pa.array(np.array([0], np.int64)), pa.array(np.array([1], np.int64)))
_META_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError)
_INT64 = (-(1 << 63), 1 << 63)


def _int64(v: int) -> pa.Array:
    return pa.array(np.array([v], np.int64))


class _MetadataColumns:
    """One-row Arrow columns of episode metadata, typed the way ``records_to_batch`` types
    them against the episodes table's schema.

    Inferring types costs ~50 us per episode; episodes of one run repeat the same keys with
    the same value types, so the types found for a layout (keys, Python types, schema) are
    reused while that schema object stands. Only ``str``/``int``/``float``/``bool`` values are
    cached (their one-row type depends on the stored column's type alone, except ints outside
    int64, which are never cached); a value the cached type cannot hold goes back to inference.
    """

    _PLAIN = frozenset({str, int, float, bool})

    def __init__(self) -> None:
        # (keys, value types) -> (schema, fields, the last values and their columns)
        self._cache: dict[tuple[tuple[str, ...], tuple[type, ...]],
                          tuple[pa.Schema, list[pa.Field], list[Any], list[pa.Array]]] = {}

    def build(self, meta: Mapping[str, Any], types: tuple[type, ...], schema: pa.Schema | None) -> tuple[list[pa.Array], list[pa.Field]]:
        """Columns and fields of ``meta`` (whose value types are ``types``)."""
        key = (tuple(meta), types)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is schema:
            _, fields, last, arrays = hit
            try:
                for j, v in enumerate(meta.values()):
                    # a value repeated from the last episode (the env id...) reuses its column;
                    # floats only when identical (-0.0 == 0.0)
                    if v is not last[j] and (type(v) is float or v != last[j]):
                        arrays[j] = pa.array([v], type=fields[j].type)
                        last[j] = v
                return list(arrays), fields
            except _META_ERRORS:  # e.g. a negative int for a stored uint64 column: infer as records_to_batch does
                del self._cache[key]
        extra = records_to_batch([meta], schema)
        columns, fields = list(extra.columns), list(extra.schema)
        if (schema is not None and len(fields) == len(meta) and self._PLAIN.issuperset(types)
                and all(type(v) is not int or _INT64[0] <= v < _INT64[1] for v in meta.values())):
            if len(self._cache) >= 64:
                self._cache.clear()
            self._cache[key] = (schema, fields, list(meta.values()), list(columns))
        return columns, fields


@functools.lru_cache(maxsize=256)
def _steps_schema(fields: tuple[tuple[pa.Field, tuple[tuple[bytes, bytes], ...]], ...]) -> pa.Schema:
    """The schema of a hand-off with these step columns (hand-offs repeat a few layouts)."""
    return pa.schema([*_KEY_FIELDS, *(f for f, _ in fields)])


class EpisodeWriter:
    """Everything an open episode does to its store."""

    def __init__(self, *, lock: threading.RLock, fields: FieldRegistry, steps: Table, episodes: Table, step_buffer: int,
                 check_writable: Callable[[], None], check_metadata: Callable[[Mapping[str, Any]], dict[str, Any]],
                 ended: Callable[[Episode], None], closed: Callable[[], bool]) -> None:
        self.lock = lock
        self.fields = fields
        self.step_buffer = step_buffer
        self._steps = steps
        self._episodes = episodes
        self.check_writable = check_writable
        self.check_metadata = check_metadata
        self.ended = ended
        self._closed = closed
        self._metadata = _MetadataColumns()
        self._schemas: dict[tuple[int, ...], tuple[tuple[pa.Field, ...], pa.Schema]] = {}

    @property
    def closed(self) -> bool:
        return self._closed()

    def append_episode_row(self, ep: Episode, *, rev: int, end: datetime | None, status: str = "open",
                           metadata: Mapping[str, Any] | None = None, ret: float | None = None) -> None:
        """A revision of ``ep``'s row: its metadata, counters and status as of now (``ret``:
        its return when the caller has it at hand, else read from the episode)."""
        meta = ep.metadata if metadata is None else metadata
        types = tuple(type(v) for v in meta.values())
        parts = ep._row_parts
        if parts is None or parts[1] != types or parts[0] != meta:
            # per episode, once (twice if the end adds metadata): its id, start and metadata
            # columns; metadata keeps the engine's type inference and widening
            more, extra = self._metadata.build(meta, types, self._episodes.schema) if meta else ([], [])
            schema = pa.schema([*EPISODE_SCHEMA, *extra])
            parts = ep._row_parts = (dict(meta), types, _int64(ep.id), pa.array([ep.start_time], _TIME), more, schema)
        if ret is None:
            ret = ep.return_
        # the store's own columns have fixed types: built directly, not inferred (inferring a
        # one-row dict cost ~150 us, twice per episode)
        arrays = [parts[2], _REV[rev] if rev in (0, 1) else _int64(rev), _STATUS.get(status) or pa.array([status], pa.string()), _int64(ep.length),
                  _NULL_FLOAT if ret is None else pa.array(np.array([ret], np.float64)), parts[3],
                  _NULL_TIME if end is None else pa.array([end], _TIME), *parts[4]]
        self._episodes.append(pa.RecordBatch.from_arrays(arrays, schema=parts[5]))

    def append_steps(self, episode_id: int, first_step: int, n: int, fields: list[pa.Field], arrays: list[pa.Array]) -> None:
        """Hand ``n`` steps (their columns) to the steps table: from now on they are acknowledged."""
        keys = [pa.array(np.full(n, episode_id, np.int64)), pa.array(np.arange(first_step, first_step + n, dtype=np.int64))]
        self._steps.append(pa.RecordBatch.from_arrays(keys + arrays, schema=self._schema_of(fields)))

    def _schema_of(self, fields: list[pa.Field]) -> pa.Schema:
        """The hand-off schema for these step columns. Hand-offs of one layout get the very same
        (cached) Field objects, so the last few schemas are found by the fields' identity, without
        hashing Arrow types or reading field metadata (both cost more than the rest of a hand-off
        on a cache-cold path)."""
        ident = tuple(map(id, fields))
        hit = self._schemas.get(ident)
        if hit is not None and all(a is b for a, b in zip(hit[0], fields)):
            return hit[1]
        # pa.Field equality ignores metadata (which holds the spec): key on it explicitly
        schema = _steps_schema(tuple((f, tuple(f.metadata.items()) if f.metadata else ()) for f in fields))
        if len(self._schemas) >= 32:
            self._schemas.clear()
        self._schemas[ident] = (tuple(fields), schema)  # holds the fields: their ids stay theirs
        return schema

    def write_stacked(self, episode_id: int, first_step: int, n: int, batch: Mapping[str, Any]) -> None:
        """Hand over columns accepted by :meth:`FieldRegistry.check_stacked`."""
        fields, arrays = stacked_to_columns(batch, self.fields.specs)
        self.append_steps(episode_id, first_step, n, fields, arrays)
