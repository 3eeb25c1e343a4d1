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


_ZERO = np.zeros(1, np.int64)


class _Columns:
    """Equal-length int64 columns that grow at their end in amortised O(new rows): the rows
    live at the front of buffers with spare capacity, so appending never copies what is there
    (a pending hand-off re-indexed against 10M committed steps copied 160 MB per sample)."""

    def __init__(self, width: int) -> None:
        self._bufs: list[np.ndarray] | None = None  # backing buffers; None: ``cols`` are not in them
        self.cols: list[np.ndarray] = [_empty() for _ in range(width)]
        self.n = 0

    def adopt(self, cols: list[np.ndarray]) -> None:
        """Hold these arrays as they are (copied into buffers only if something is appended)."""
        self._bufs, self.cols, self.n = None, cols, len(cols[0])

    def write(self, at: int, more: list[np.ndarray]) -> list[np.ndarray]:
        """Rows ``0..at`` as they are plus ``more`` after them; return views of all of them.
        Rows past ``at`` written earlier (a previous pending part) are overwritten."""
        need = at + len(more[0])
        bufs = self._bufs
        if bufs is None or len(bufs[0]) < need:
            cap = max(need, 2 * (len(bufs[0]) if bufs is not None else at), 1024)
            fresh = [np.empty(cap, np.int64) for _ in more]
            for f, c in zip(fresh, self.cols if bufs is None else [b[:at] for b in bufs]):
                f[:at] = c[:at]
            self._bufs = bufs = fresh
        for b, m in zip(bufs, more):
            b[at:need] = m
        return [b[:need] for b in bufs]

    def append(self, more: list[np.ndarray]) -> None:
        self.cols = self.write(self.n, more)
        self.n = len(self.cols[0])


def _episode_table(keys: np.ndarray, base: int) -> list[np.ndarray]:
    """``[ids, starts, lengths]`` of the episodes in a sorted key run starting at position ``base``."""
    episode = keys >> STEP_BITS
    n = len(episode)
    if not n:
        return [_empty(), _empty(), _empty()]
    # the first row and every row whose episode differs from the one before (plain
    # concatenates: np.r_'s overhead tripled this for a few hundred keys)
    starts = np.concatenate((_ZERO, np.flatnonzero(episode[1:] != episode[:-1]).astype(np.int64) + 1))
    bounds = np.concatenate((starts, np.array([n], np.int64)))
    return [episode[starts], starts + base, bounds[1:] - bounds[:-1]]


class StepIndex:
    """Row positions of the steps table sorted by (episode_id, step).

    Committed rows are merged in as they come; this handle's pending rows are kept after them
    and replaced on every change. When new keys sort after every key held (new episodes, or
    more steps of the last one: the usual case) they are appended without touching the rows
    before them, so keeping the index current costs O(new rows), not O(all rows).
    """

    def __init__(self) -> None:
        self._committed = _Columns(2)  # keys, positions
        self._cepisodes = _Columns(3)  # ids, starts, lengths of the committed rows
        self.keys = self.positions = self.ids = self.starts = self.lengths = _empty()
        # the pending rows' keys and episodes sit in the committed buffers right after the
        # committed ones (none continues the last committed episode): more can be appended
        self._pending_in_place = False

    @property
    def ckeys(self) -> np.ndarray:
        return self._committed.cols[0]

    @property
    def cpositions(self) -> np.ndarray:
        return self._committed.cols[1]

    def reset(self) -> None:
        self.adopt_committed(_empty(), _empty())

    def adopt_committed(self, keys: np.ndarray, positions: np.ndarray) -> None:
        """Use these sorted committed keys and positions (a saved view's, memory-mapped)."""
        self._committed.adopt([keys, positions])
        self._cepisodes.adopt(_episode_table(keys, 0))
        self.set_pending(_empty(), 0)

    def truncate_committed(self, rows: int) -> None:
        """Forget committed rows at positions ``rows`` and after (they are read again)."""
        keep = self.cpositions < rows
        if not keep.all():
            self.adopt_committed(self.ckeys[keep], self.cpositions[keep])

    def add_committed(self, keys: np.ndarray, first_position: int) -> None:
        """Merge in the keys of committed rows at ``first_position`` onwards (in row order)."""
        k, p = _sorted(keys, first_position)
        if not len(k):
            return
        self._pending_in_place = False  # the committed buffers change: set_pending comes next
        ck = self.ckeys
        if not len(ck) or k[0] >= ck[-1]:
            base = len(ck)
            self._committed.append([k, p])
            self._append_episodes(self._cepisodes, _episode_table(k, base))
        else:
            self.adopt_committed(*_merge(ck, self.cpositions, k, p))

    def set_pending(self, keys: np.ndarray, first_position: int) -> None:
        """Index the committed rows plus these pending ones; recompute the episode table."""
        ck = self.ckeys
        self._pending_in_place = False
        if not len(keys):
            self.keys, self.positions = ck, self.cpositions
            self.ids, self.starts, self.lengths = self._cepisodes.cols
            return
        k, p = _sorted(keys, first_position)
        if not len(ck) or k[0] >= ck[-1]:
            self.keys, self.positions = self._committed.write(len(ck), [k, p])
            table = _episode_table(k, len(ck))
            (self.ids, self.starts, self.lengths), self._pending_in_place = self._joined_episodes(table)
        else:
            self.keys, self.positions = _merge(ck, self.cpositions, k, p)
            self.ids, self.starts, self.lengths = _episode_table(self.keys, 0)

    def extend_pending(self, keys: np.ndarray, first_position: int) -> bool:
        """Add pending rows after those indexed (keys in row order from ``first_position``),
        in O(new rows) when they sort after every key held and the pending part sits in place;
        False, changing nothing, when not (call :meth:`set_pending` with all of them)."""
        if not self._pending_in_place or not len(keys):
            return False
        k, p = _sorted(keys, first_position)
        if k[0] <= self.keys[-1]:
            return False
        at = len(self.keys)
        table = _episode_table(k, at)
        m = len(self.ids)
        if table[0][0] == self.ids[-1]:  # the last pending episode goes on (its row is pending's own)
            self.lengths[-1] += table[2][0]
            table = [t[1:] for t in table]
        self.keys, self.positions = self._committed.write(at, [k, p])
        if len(table[0]):
            self.ids, self.starts, self.lengths = self._cepisodes.write(m, table)
        return True

    @staticmethod
    def _append_episodes(episodes: _Columns, more: list[np.ndarray]) -> None:
        ids, starts, lengths = episodes.cols
        if len(ids) and len(more[0]) and more[0][0] == ids[-1]:  # the last episode goes on
            head = [ids[-1:], starts[-1:], lengths[-1:] + more[2][0]]
            episodes.cols = episodes.write(episodes.n - 1, [np.concatenate([a, m[1:]]) for a, m in zip(head, more)])
            episodes.n = len(episodes.cols[0])
        else:
            episodes.append(more)

    def _joined_episodes(self, more: list[np.ndarray]) -> tuple[list[np.ndarray], bool]:
        """The committed episode table followed by ``more`` (pending rows' episodes, sorted
        after every committed key), and whether it was written after it in place (else, when
        the pending steps continue the last committed episode, it is a copy: that committed
        row must stay as it is)."""
        c = self._cepisodes
        ids, starts, lengths = c.cols
        if len(ids) and more[0][0] == ids[-1]:
            return [np.concatenate([ids, more[0][1:]]), np.concatenate([starts, more[1][1:]]),
                    np.concatenate([lengths[:-1], lengths[-1:] + more[2][0], more[2][1:]])], False
        return c.write(c.n, more), True

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
