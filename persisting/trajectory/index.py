"""Where each episode's steps live in the steps table, for lookup and sampling.

Steps of one episode are appended in chunks that may interleave with other open episodes'
chunks, so an episode's rows are not one contiguous range. The index keeps every step's row
position sorted by ``(episode_id, step)``; an episode is then one slice of that order, and a
uniform step sample is a uniform index into it. It is refreshed incrementally: only rows
appended since the last refresh are read (two int columns), and sorted data is merged rather
than re-sorted when the new rows come after the old ones, the common case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persisting.engine.table import Table
from persisting.errors import NotFoundError

__all__ = ["StepIndex"]

_STEP_BITS = 32


@dataclass
class StepIndex:
    """Row positions of the steps table sorted by (episode_id, step)."""

    rows: int = 0
    keys: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    starts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    lengths: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))

    def refresh(self, table: Table) -> None:
        """Take in rows appended to ``table`` since the last refresh."""
        total = table.count()
        if total == self.rows:
            return
        if total < self.rows:  # rows were removed: start again
            self.__init__()  # type: ignore[misc]
        new = table.scan(columns=["episode_id", "step"], offset=self.rows)
        ids = new.column("episode_id").to_numpy().astype(np.int64)
        steps = new.column("step").to_numpy().astype(np.int64)
        keys = (ids << _STEP_BITS) | steps
        positions = np.arange(self.rows, self.rows + len(keys), dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        keys, positions = keys[order], positions[order]
        if len(self.keys) and len(keys) and keys[0] < self.keys[-1]:
            keys = np.concatenate([self.keys, keys])
            positions = np.concatenate([self.positions, positions])
            order = np.argsort(keys, kind="stable")
            self.keys, self.positions = keys[order], positions[order]
        else:
            self.keys = np.concatenate([self.keys, keys])
            self.positions = np.concatenate([self.positions, positions])
        self.rows = total
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
