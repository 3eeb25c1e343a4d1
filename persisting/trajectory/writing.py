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


def _int64(v: int) -> pa.Array:
    return pa.array(np.array([v], np.int64))


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

    @property
    def closed(self) -> bool:
        return self._closed()

    def append_episode_row(self, ep: Episode, *, rev: int, end: datetime | None, status: str = "open",
                           metadata: Mapping[str, Any] | None = None) -> None:
        """A revision of ``ep``'s row: its metadata, counters and status as of now."""
        meta = ep.metadata if metadata is None else metadata
        types = tuple(type(v) for v in meta.values())
        parts = ep._row_parts
        if parts is None or parts[1] != types or parts[0] != meta:
            # per episode, once (twice if the end adds metadata): its id, start and metadata
            # columns; metadata keeps the engine's type inference and widening
            extra = records_to_batch([meta], self._episodes.schema) if meta else None
            more = list(extra.columns) if extra is not None else []
            schema = pa.schema([*EPISODE_SCHEMA, *(extra.schema if extra is not None else [])])
            parts = ep._row_parts = (dict(meta), types, _int64(ep.id), pa.array([ep.start_time], _TIME), more, schema)
        ret = ep.return_
        # the store's own columns have fixed types: built directly, not inferred (inferring a
        # one-row dict cost ~150 us, twice per episode)
        arrays = [parts[2], _int64(rev), _STATUS.get(status) or pa.array([status], pa.string()), _int64(ep.length),
                  _NULL_FLOAT if ret is None else pa.array(np.array([ret], np.float64)), parts[3],
                  _NULL_TIME if end is None else pa.array([end], _TIME), *parts[4]]
        self._episodes.append(pa.RecordBatch.from_arrays(arrays, schema=parts[5]))

    def append_steps(self, episode_id: int, first_step: int, n: int, fields: list[pa.Field], arrays: list[pa.Array]) -> None:
        """Hand ``n`` steps (their columns) to the steps table: from now on they are acknowledged."""
        keys = [pa.array(np.full(n, episode_id, np.int64)), pa.array(np.arange(first_step, first_step + n, dtype=np.int64))]
        # pa.Field equality ignores metadata (which holds the spec): key on it explicitly
        key = tuple((f, tuple(f.metadata.items()) if f.metadata else ()) for f in fields)
        self._steps.append(pa.RecordBatch.from_arrays(keys + arrays, schema=_steps_schema(key)))

    def write_stacked(self, episode_id: int, first_step: int, n: int, batch: Mapping[str, Any]) -> None:
        """Hand over columns accepted by :meth:`FieldRegistry.check_stacked`."""
        fields, arrays = stacked_to_columns(batch, self.fields.specs)
        self.append_steps(episode_id, first_step, n, fields, arrays)
