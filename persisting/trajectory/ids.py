"""Episode ids for many writer processes: blocks reserved in the ``ids`` table.

Each writer session reserves ids in blocks of :data:`ID_BLOCK`: under the store-wide lock
(:class:`~persisting.trajectory.sessions.Sessions`) it reads the high-water mark (the largest
``next_id`` any row records) -- or, with the WAL on object storage, moves a counter object by
compare-and-swap (:class:`~persisting.trajectory.remote_sessions.RemoteSessions`) -- then
appends ``{session, block_start, next_id}`` and commits it (durability ``always``) before
handing out any id of the block. So ids never collide across
processes, stay ``int`` (and grow over time, though ids of concurrent writers interleave by
block), and cost one commit per block, not a round trip per episode. An id is never handed out
twice, even when a crash lost the episode that had it.

A session ends with a ``closed`` row (written by ``close()``, with the first id it did not use:
the rest of its block is handed out again, so clean closes leave no gaps) or a ``recovered``
row (written by the writer that marked its open episodes ``incomplete``; a dead session's
blocks are never reused). A session with reserved blocks and neither row, whose process is
gone, is dead and still to recover.

Stores written by the single-writer version hold rows without ``session`` (``next_id``,
``session_start``, ``clean``); their last row not ``clean`` means that writer died: its ids
start at ``session_start``. That legacy session is recovered once, like any other.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from persisting.engine.table import Table

__all__ = ["IDS_SCHEMA", "ID_BLOCK", "LEGACY", "BlockSource", "EpisodeIds", "SessionRanges", "high_water", "mark_recovered", "open_sessions"]

ID_BLOCK = 1024
LEGACY = "legacy"  # the session id given to a single-writer-era writer that died
IDS_SCHEMA = pa.schema([
    pa.field("next_id", pa.int64()),
    pa.field("session", pa.string()),
    pa.field("event", pa.string()),
    pa.field("block_start", pa.int64()),
])


@dataclass(frozen=True)
class SessionRanges:
    """The episode id ranges ``[start, stop)`` one session reserved."""

    session_id: str
    ranges: tuple[tuple[int, int], ...]

    def sql(self) -> str:
        """A SQL predicate on ``episode_id`` matching these ranges."""
        if not self.ranges:
            return "false"
        return " OR ".join(f"(episode_id >= {a} AND episode_id < {b})" for a, b in self.ranges)


def high_water(ids: Table) -> int:
    """The first id above every id a session may have handed out: per session the end of its
    newest block, or where a clean close said it stopped (so clean closes leave no gaps)."""
    if ids.count() == 0:
        return 0
    names = ids.schema.names if ids.schema is not None else []
    rows = ids.scan(columns=[c for c in ("next_id", "session", "event") if c in names])
    if "session" not in names:
        return int(rows.column("next_id")[-1].as_py() or 0)  # the single-writer layout: its last row
    top = 0
    legacy = rows.filter(pc.is_null(rows.column("session")))
    if legacy.num_rows:
        top = int(legacy.column("next_id")[-1].as_py() or 0)
    ends: dict[str, int] = {}
    closed: dict[str, int] = {}
    for r in rows.filter(pc.is_valid(rows.column("session"))).to_pylist():
        if r["event"] == "reserve":
            ends[r["session"]] = max(ends.get(r["session"], 0), int(r["next_id"]))
        elif r["event"] == "closed":
            closed[r["session"]] = int(r["next_id"])
    for sid, end in ends.items():
        top = max(top, closed.get(sid, end))
    return top


def open_sessions(ids: Table) -> dict[str, SessionRanges]:
    """Sessions with reserved ids that never ended (no ``closed``/``recovered`` row)."""
    if ids.count() == 0:
        return {}
    names = ids.schema.names if ids.schema is not None else []
    out: dict[str, SessionRanges] = {}
    if "session" in names:
        rows = ids.scan(columns=["session", "event", "block_start", "next_id"], filter="session IS NOT NULL")
        ended = set()
        ranges: dict[str, list[tuple[int, int]]] = {}
        for r in rows.to_pylist():
            if r["event"] == "reserve":
                ranges.setdefault(r["session"], []).append((int(r["block_start"]), int(r["next_id"])))
            else:
                ended.add(r["session"])
        out = {s: SessionRanges(s, tuple(sorted(rs))) for s, rs in ranges.items() if s not in ended}
        if LEGACY in ended:
            return out
    legacy = _legacy_session(ids, names)
    if legacy is not None:
        out[LEGACY] = legacy
    return out


def _legacy_session(ids: Table, names: list[str]) -> SessionRanges | None:
    """The single-writer-era writer that died, if the newest legacy row is not clean."""
    if "session_start" not in names:
        return None
    where = "session IS NULL" if "session" in names else None
    rows = ids.scan(columns=["next_id", "session_start", "clean"], filter=where)
    if not rows.num_rows:
        return None
    last = rows.slice(rows.num_rows - 1).to_pylist()[0]  # one writer at a time wrote them, in order
    if last["clean"]:
        return None
    top = int(pc.max(rows.column("next_id")).as_py())
    return SessionRanges(LEGACY, ((int(last["session_start"] or 0), max(top, int(last["next_id"]))),))


class BlockSource(Protocol):
    """Where id blocks come from: the local store lock, or a counter on object storage."""

    def locked(self) -> AbstractContextManager[None]: ...
    def next_block(self, ids: Table, floor: int, size: int) -> int: ...
    def give_back(self, used: int, stop: int) -> None: ...


class EpisodeIds:
    """Hands out this session's episode ids, reserving a new block when one runs out."""

    def __init__(self, ids: Table, sessions: BlockSource, session_id: str, floor: int = 0) -> None:
        self._ids = ids
        self._sessions = sessions
        self.session_id = session_id
        self._floor = floor  # above every id already in use, whatever the ids table says
        self._next = 0
        self._stop = 0  # no block yet: the first id reserves one
        self.reserved = False

    def new_id(self) -> int:
        if self._next >= self._stop:
            self._reserve()
        self._next += 1
        return self._next - 1

    def _reserve(self) -> None:
        with self._sessions.locked():
            self.reserve_locked()

    def reserve_locked(self) -> None:
        """Reserve the next block (the caller holds the store lock)."""
        self._ids.refresh()  # every other session's reservations, committed before their lock was released
        start = self._sessions.next_block(self._ids, self._floor, ID_BLOCK)
        stop = start + ID_BLOCK
        self._ids.append([{"session": self.session_id, "event": "reserve", "block_start": start, "next_id": stop}])
        self._ids.flush()  # durable and visible to every process before any id is used
        self._next, self._stop = start, stop
        self.reserved = True

    def close(self) -> None:
        """Record that this session ended cleanly (no recovery needed) and which of its ids
        it used: the rest of its newest block goes back to the next reservation."""
        self._ids.append([{"session": self.session_id, "event": "closed", "next_id": self._next}])
        self._ids.flush()
        self._sessions.give_back(self._next, self._stop)  # after the row: a dead-looking session keeps them


def mark_recovered(ids: Table, session_id: str) -> None:
    """Record that a dead session's open episodes were marked ``incomplete`` (once)."""
    ids.append([{"session": session_id, "event": "recovered", "next_id": 0}])
    ids.flush()
