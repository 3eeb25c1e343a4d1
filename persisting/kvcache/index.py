"""The in-memory index of a KV cache: which chunk keys exist, where, and how recently used.

Chunks form a tree: each key names a whole prefix, and its parent is the key of the prefix one
chunk shorter (the namespace seed for chunk 0). Eviction must never leave a chunk whose parent
is gone, since no lookup could ever reach it. Recency is a counter, not a clock: touching a
chain gives every chunk on it the same tick, so a parent's tick is never older than any of its
children's, and the least recent chunk -- ties broken deepest first -- is always a leaf.

Several processes share one table: :meth:`ChunkIndex.merge` folds in rows other processes
appended (or, after deletes and compaction, the whole table again) and keeps what this process
knows of recency. Two processes may store the same new chunk at once: the second row is a
duplicate whose bytes count (``extra``) until its key is removed, which removes both rows.
"""

from __future__ import annotations

import bisect
import gc
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ChunkIndex", "Entry"]


@dataclass(eq=False, slots=True)
class Entry:
    """One stored chunk: its key, parent key, depth (chunk number), payload size, row position."""

    key: str
    parent: str
    depth: int
    nbytes: int
    position: int
    tick: int = 0
    children: list[str] | None = None


class ChunkIndex:
    """Key -> Entry, with the byte total and an LRU order over leaves."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.entries: dict[str, Entry] = {}
        self.nbytes = 0
        self._tick = 0
        self._heap: list[tuple[int, int, str]] | None = None  # built on the first eviction
        self._tree = True
        self.extra: dict[str, int] = {}  # key -> bytes of duplicate rows stored under it

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    # -- building ----------------------------------------------------------------------------
    def load(self, keys: Sequence[str], parents: Sequence[str], depths: Sequence[int], nbytes: Sequence[int]) -> list[int]:
        """Rebuild from the table's rows (in row order); return positions of rows to drop:
        duplicates and orphans (chunks whose parent is not stored)."""
        gc_was_enabled = gc.isenabled()
        gc.disable()  # 100k new objects would trigger full collections that find nothing
        try:
            return self._load(keys, parents, depths, nbytes)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _load(self, keys: Sequence[str], parents: Sequence[str], depths: Sequence[int], nbytes: Sequence[int]) -> list[int]:
        entries: dict[str, Entry] = {}
        seed = self.seed
        drop: list[int] = []
        total = 0
        order = np.argsort(np.asarray(depths, dtype=np.int64), kind="stable").tolist()  # parents first
        for i in order:
            key, parent = keys[i], parents[i]
            if key in entries or (parent != seed and parent not in entries):
                drop.append(i)  # a duplicate, or an orphan whose parent is gone
                continue
            size = nbytes[i]
            entries[key] = Entry(key, parent, depths[i], size, i, i + 1)  # recency at open: row order
            total += size
        self.entries, self.nbytes = entries, total
        self.extra = {}
        self._tick = len(keys) + 1
        self._heap = None
        self._tree = False  # children and the recency invariant are set up on first removal
        return sorted(drop)

    def _ensure_tree(self) -> None:
        """Link children and make every parent at least as recent as its children; only
        eviction and removal need either, so opening does not pay for them."""
        if self._tree:
            return
        for e in self.entries.values():
            e.children = None
        for e in sorted(self.entries.values(), key=lambda e: -e.depth):
            p = self.entries.get(e.parent)
            if p is not None:
                if p.children is None:
                    p.children = [e.key]
                else:
                    p.children.append(e.key)
                p.tick = max(p.tick, e.tick)
        self._tree = True

    def merge(
        self, keys: Sequence[str], parents: Sequence[str], depths: Sequence[int], nbytes: Sequence[int],
        *, start: int, replace: bool, positions: Sequence[int] | None = None,
    ) -> list[int]:
        """Fold rows read from the table (row i sits at position ``start + i``) into the index;
        return the offsets of orphan rows (parent not stored), which are left out.

        ``replace``: the rows are the whole table, so keys missing from them were removed (by
        another process); keys kept keep their recency. Otherwise the rows were appended after
        everything indexed: new keys are added as used now, a key already indexed is a duplicate.
        ``positions``: each row's position, when the rows are not one run from ``start``.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._merge(keys, parents, depths, nbytes, start, replace, positions)
        finally:
            if gc_was_enabled:
                gc.enable()

    def remap(self, moves: Sequence[tuple[int, int, int | None]], keys: Sequence[str], parents: Sequence[str],
              depths: Sequence[int], nbytes: Sequence[int], positions: Sequence[int]) -> list[int] | None:
        """Follow rows deleted in place without reading the table again: indexed rows in
        fragments nothing was deleted from shift as ``moves`` say (``(old_start, old_end,
        new_start)``; ``new_start`` None: read again); the rows read again (``keys``... at
        ``positions``: what is left of the fragments deleted from, and everything appended since)
        give the others their new positions, and new rows are folded in as appended (orphan
        offsets returned). None when the rows read again lack an indexed key (another process
        deleted it) or repeat one held elsewhere (a duplicate): read the whole table then
        (positions here may be half updated; the full read sets every one)."""
        starts = [m[0] for m in moves]
        again: dict[str, Entry] = {}
        for e in self.entries.values():
            old_start, old_end, new_start = moves[bisect.bisect_right(starts, e.position) - 1]
            if new_start is None or e.position >= old_end:
                again[e.key] = e
            else:
                e.position += new_start - old_start
        fresh: list[int] = []
        for i, key in enumerate(keys):
            e = again.pop(key, None)
            if e is not None and e.parent == parents[i] and e.nbytes == nbytes[i]:
                e.position = int(positions[i])
            elif key in self.entries:
                return None  # a duplicate row (its bytes are counted in ``extra``)
            else:
                fresh.append(i)
        if again:
            return None
        if not fresh:
            return []
        pick = [keys[i] for i in fresh], [parents[i] for i in fresh], [depths[i] for i in fresh], [nbytes[i] for i in fresh]
        orphans = self.merge(*pick, start=0, replace=False, positions=[int(positions[i]) for i in fresh])
        return [fresh[i] for i in orphans]

    def _merge(
        self, keys: Sequence[str], parents: Sequence[str], depths: Sequence[int], nbytes: Sequence[int],
        start: int, replace: bool, positions: Sequence[int] | None = None,
    ) -> list[int]:
        old = self.entries
        entries: dict[str, Entry] = {} if replace else old
        extra: dict[str, int] = {} if replace else self.extra
        base, seed = self._tick, self.seed
        self._tick = base + len(keys) + 1  # new rows count as used now, in row order
        orphans: list[int] = []
        added: list[Entry] = []
        total = 0
        order = np.argsort(np.asarray(depths, dtype=np.int64), kind="stable").tolist()  # parents first
        for i in order:
            key, parent, size = keys[i], parents[i], nbytes[i]
            if key in entries:
                extra[key] = extra.get(key, 0) + size
                total += size
                continue
            if parent != seed and parent not in entries:
                orphans.append(i)
                continue
            at = start + i if positions is None else positions[i]
            e = old.get(key) if replace else None
            if e is not None and e.parent == parent:
                e.position, e.nbytes = at, size
            else:
                e = Entry(key, parent, depths[i], size, at, base + i + 1)
                added.append(e)
            entries[key] = e
            total += size
        if replace:
            self.entries, self.extra, self.nbytes = entries, extra, total
            if self._tree:
                # keep the links and the LRU heap (rebuilding both cost O(n log n) per eviction
                # at capacity, where every put deletes): unlink what is gone, link what is new;
                # the heap skips entries no longer indexed
                for key, e in old.items():
                    if entries.get(key) is not e:
                        p = entries.get(e.parent)
                        if p is not None and p.children and key in p.children:
                            p.children.remove(key)
                for e in added:
                    e.children = None
                self._link(added)
        else:
            self.nbytes += total
            self._link(added)
        return sorted(orphans)

    def _link(self, added: list[Entry]) -> None:
        """Link new entries to their parents and make every ancestor at least as recent."""
        if not self._tree:
            return
        for e in sorted(added, key=lambda e: e.depth):
            p = self.entries.get(e.parent)
            if p is not None:
                p.children = [e.key] if p.children is None else [*p.children, e.key]
            while p is not None and p.tick < e.tick:
                p.tick = e.tick
                if self._heap is not None:
                    heapq.heappush(self._heap, (p.tick, -p.depth, p.key))
                p = self.entries.get(p.parent)
            if self._heap is not None:
                heapq.heappush(self._heap, (e.tick, -e.depth, e.key))

    def add(self, key: str, parent: str, depth: int, nbytes: int, position: int) -> None:
        """A chunk just committed; its chain should be touched by the caller."""
        if parent != self.seed:
            p = self.entries.get(parent)
            if p is None:
                raise KeyError(f"parent {parent} of chunk {key} is not indexed")
            if self._tree:
                if p.children is None:
                    p.children = [key]
                else:
                    p.children.append(key)
        self.entries[key] = Entry(key, parent, depth, nbytes, position, self._tick)
        self.nbytes += nbytes

    def set_positions(self, keys_in_row_order: Sequence[str]) -> None:
        """Row positions shift when rows are deleted; reassign them from a fresh scan."""
        for pos, key in enumerate(keys_in_row_order):
            e = self.entries.get(key)
            if e is not None:
                e.position = pos

    # -- reading -----------------------------------------------------------------------------
    def longest_prefix(self, keys: Iterable[str]) -> list[Entry]:
        """Entries of the longest run of ``keys`` (a chain, in order) that is indexed."""
        out = []
        for key in keys:
            e = self.entries.get(key)
            if e is None:
                break
            out.append(e)
        return out

    def touch(self, chain: Sequence[Entry]) -> None:
        """Mark a chain (root first) as used now: one tick for all of it."""
        if not chain:
            return
        self._tick += 1
        for e in chain:
            e.tick = self._tick
        if self._heap is not None:
            for e in chain:
                heapq.heappush(self._heap, (e.tick, -e.depth, e.key))
            if len(self._heap) > 4 * len(self.entries) + 1024:
                self._heap = None  # rebuilt from the live entries when next needed

    # -- removing ----------------------------------------------------------------------------
    def remove_subtree(self, key: str) -> list[Entry]:
        """Remove a chunk and every chunk below it; return them, deepest first."""
        root = self.entries.get(key)
        if root is None:
            return []
        self._ensure_tree()
        found, stack = [], [root]
        while stack:
            e = stack.pop()
            found.append(e)
            if e.children:
                stack.extend(self.entries[c] for c in e.children if c in self.entries)
        found.sort(key=lambda e: -e.depth)
        for e in found:
            del self.entries[e.key]
            self.nbytes -= e.nbytes + self.extra.pop(e.key, 0)
        p = self.entries.get(root.parent)
        if p is not None and p.children:
            p.children.remove(root.key)
        return found

    def pop_lru(self) -> list[Entry]:
        """Remove the least recently used leaf (and, defensively, anything below it)."""
        if self._heap is None:
            self._rebuild_heap()
        assert self._heap is not None
        while self._heap:
            tick, _, key = heapq.heappop(self._heap)
            e = self.entries.get(key)
            if e is not None and e.tick == tick:
                return self.remove_subtree(key)
        return []

    def _rebuild_heap(self) -> None:
        self._ensure_tree()
        self._heap = [(e.tick, -e.depth, e.key) for e in self.entries.values()]
        heapq.heapify(self._heap)
