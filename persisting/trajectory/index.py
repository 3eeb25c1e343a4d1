"""Where each episode's steps live in the steps table, for lookup and sampling.

Rows of one episode are appended in chunks that interleave with other open episodes' chunks
and with other writer processes' rows, and other writers' compactions move rows, so an
episode is never located by a position range. The index keeps every visible step's row
position sorted by ``(episode_id, step)``: an episode is one slice of that order (found by a
binary search over episode ids), and a uniform step sample is a uniform index into it.

The index holds no table: :class:`~persisting.trajectory.sampling.StepView` feeds it the keys
of new committed rows (merged in), and this handle's pending rows (kept apart, replaced on
every change), whenever it catches up with the steps table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persisting.errors import NotFoundError

__all__ = ["STEP_BITS", "StepIndex", "step_keys"]

STEP_BITS = 32
_STEP_MASK = (1 << STEP_BITS) - 1


def step_keys(episode_ids: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """One sortable int64 per step: episode id in the high bits, step in the low ones."""
    keys = episode_ids.astype(np.int64, copy=False) << STEP_BITS
    keys |= steps.astype(np.int64, copy=False)
    return keys


def _empty() -> np.ndarray:
    return np.empty(0, np.int64)


@dataclass
class StepIndex:
    """Row positions of the steps table sorted by (episode_id, step)."""

    ckeys: np.ndarray = field(default_factory=_empty)  # committed rows only
    cpositions: np.ndarray = field(default_factory=_empty)
    keys: np.ndarray = field(default_factory=_empty)  # committed + this handle's pending rows
    positions: np.ndarray = field(default_factory=_empty)
    ids: np.ndarray = field(default_factory=_empty)
    starts: np.ndarray = field(default_factory=_empty)
    lengths: np.ndarray = field(default_factory=_empty)

    def reset(self) -> None:
        self.ckeys, self.cpositions = _empty(), _empty()

    def add_committed(self, keys: np.ndarray, first_position: int) -> None:
        """Merge in the keys of committed rows at ``first_position`` onwards (in row order)."""
        self.ckeys, self.cpositions = _merge(self.ckeys, self.cpositions, *_sorted(keys, first_position))

    def set_pending(self, keys: np.ndarray, first_position: int) -> None:
        """Index the committed rows plus these pending ones; recompute the episode table."""
        if len(keys):
            self.keys, self.positions = _merge(self.ckeys, self.cpositions, *_sorted(keys, first_position))
        else:
            self.keys, self.positions = self.ckeys, self.cpositions
        episode = self.keys >> STEP_BITS
        if len(episode):
            starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
            self.ids, self.starts = episode[starts], starts.astype(np.int64)
            self.lengths = np.diff(np.r_[starts, len(episode)]).astype(np.int64)
        else:
            self.ids, self.starts, self.lengths = _empty(), _empty(), _empty()

    def split(self, sorted_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(episode_id, step)`` arrays of the steps at these sorted indices."""
        k = self.keys[sorted_idx]
        return k >> STEP_BITS, k & _STEP_MASK

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


def _sorted(keys: np.ndarray, first_position: int) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(first_position, first_position + len(keys), dtype=np.int64)
    if len(keys) > 1 and not (keys[1:] >= keys[:-1]).all():
        order = np.argsort(keys, kind="stable")
        return keys[order], positions[order]
    return keys, positions


def _merge(keys: np.ndarray, positions: np.ndarray, more_keys: np.ndarray, more_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted key runs as one (a stable sort of two sorted runs is a linear merge)."""
    if not len(keys):
        return more_keys, more_positions
    if not len(more_keys):
        return keys, positions
    if more_keys[0] >= keys[-1]:
        return np.concatenate([keys, more_keys]), np.concatenate([positions, more_positions])
    # only the tail of the old run that the new keys reach into needs sorting
    cut = int(np.searchsorted(keys, more_keys[0], side="right"))
    k = np.concatenate([keys[cut:], more_keys])
    p = np.concatenate([positions[cut:], more_positions])
    order = np.argsort(k, kind="stable")
    return np.concatenate([keys[:cut], k[order]]), np.concatenate([positions[:cut], p[order]])
