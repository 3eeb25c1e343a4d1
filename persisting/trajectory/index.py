"""Where each episode's steps live in the steps table, for lookup and sampling.

Rows of one episode are appended in chunks that interleave with other open episodes' chunks
and with other writer processes' rows, and other writers' compactions move rows, so an
episode is never located by a position range. The index keeps every visible step's row
position sorted by ``(episode_id, step)``: an episode is one slice of that order, and a
uniform step sample is a uniform index into it.

Positions are valid for the table as it was when the index was refreshed; the store refreshes
the index and takes rows inside one ``Table.pinned()`` block, so no commit lands in between. The committed
part is refreshed incrementally while other writers only append (the engine's row layout
says so: read just the new rows, two int columns); after a compaction or delete it is read
again. This handle's own pending rows follow the committed ones and are re-read when they
change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persisting.engine import RowLayout, Table
from persisting.errors import NotFoundError

__all__ = ["StepIndex"]

_STEP_BITS = 32


@dataclass
class StepIndex:
    """Row positions of the steps table sorted by (episode_id, step)."""

    layout: RowLayout | None = None  # the committed rows indexed in ckeys/cpositions
    total: int = -1  # committed + pending rows when last refreshed
    ckeys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    cpositions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    starts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def refresh(self, table: Table) -> None:
        """Catch up with ``table`` as it is pinned now (committed rows of every writer, then
        this handle's pending rows)."""
        layout = table.row_layout()
        total = table.count()
        if layout == self.layout and total == self.total:
            return
        kept = self.layout.kept_rows(layout) if self.layout is not None else None
        if kept is None:  # first read, or rows were compacted/deleted/moved: read them all
            kept = 0
            self.ckeys, self.cpositions = np.empty(0, np.int64), np.empty(0, np.int64)
        if layout.rows > kept:
            self.ckeys, self.cpositions = _merge(self.ckeys, self.cpositions, *_keys(table, kept, layout.rows - kept))
        self.layout = layout
        if total > layout.rows:
            self.keys, self.positions = _merge(self.ckeys, self.cpositions, *_keys(table, layout.rows, total - layout.rows))
        else:
            self.keys, self.positions = self.ckeys, self.cpositions
        self.total = total
        episode = self.keys >> _STEP_BITS
        self.ids, self.starts, self.lengths = np.unique(episode, return_index=True, return_counts=True)

    def episode_slice(self, episode_id: int) -> slice:
        """The slice of :attr:`positions` holding ``episode_id``'s steps (empty if none)."""
        i = int(np.searchsorted(self.ids, episode_id))
        if i < len(self.ids) and self.ids[i] == episode_id:
            return slice(int(self.starts[i]), int(self.starts[i] + self.lengths[i]))
        return slice(0, 0)

    def has_next(self, idx: np.ndarray) -> np.ndarray:
        """For sorted indices ``idx``: is the following sorted step the same episode's next step?"""
        nxt = np.minimum(idx + 1, len(self.keys) - 1)
        return (idx + 1 < len(self.keys)) & (self.keys[nxt] == self.keys[idx] + 1)

    def slice_starts(self, length: int, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` sorted indices at which a run of ``length`` steps of one episode starts."""
        valid = np.maximum(self.lengths - length + 1, 0)
        total = int(valid.sum())
        if total == 0:
            raise NotFoundError(f"no episode has {length} steps; sample shorter slices", length=length)
        cum = np.cumsum(valid)
        draw = rng.integers(0, total, size=n)
        ep = np.searchsorted(cum, draw, side="right")
        offset = draw - (cum[ep] - valid[ep])
        return self.starts[ep] + offset


def _keys(table: Table, offset: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(episode_id, step)`` keys of ``n`` rows from position ``offset``, with positions."""
    new = table.scan(columns=["episode_id", "step"], offset=offset, limit=n)
    ids = new.column("episode_id").to_numpy().astype(np.int64)
    steps = new.column("step").to_numpy().astype(np.int64)
    keys = (ids << _STEP_BITS) | steps
    positions = np.arange(offset, offset + len(keys), dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], positions[order]


def _merge(keys: np.ndarray, positions: np.ndarray, more_keys: np.ndarray, more_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted key runs as one (a stable sort of two sorted runs is a linear merge)."""
    if not len(keys):
        return more_keys, more_positions
    k = np.concatenate([keys, more_keys])
    p = np.concatenate([positions, more_positions])
    if not len(more_keys) or more_keys[0] >= keys[-1]:
        return k, p
    order = np.argsort(k, kind="stable")
    return k[order], p[order]
