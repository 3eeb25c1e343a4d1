"""Row layout: a fingerprint of where a table's committed rows sit, to tell cheaply whether the
row positions a caller indexed are still valid after other writers committed.

Positions change when rows are deleted or compacted (and a compaction racing appends can move
old rows after new ones); appends alone only add positions at the end. A caller that maps
keys to positions keeps the layout it indexed; when the table moves, :meth:`RowLayout.kept_rows`
says whether only appends happened since (read just the new rows) or positions must be read
again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Move", "RowLayout", "moves", "row_layout"]


@dataclass(frozen=True)
class RowLayout:
    """Committed fragments in order (id, physical rows, deletion-file version, deleted rows)
    of one table version, and the committed row count."""

    version: int
    fragments: tuple[tuple[int, int, int, int], ...]
    rows: int

    def kept_rows(self, newer: RowLayout) -> int | None:
        """Rows at positions below this number mean the same rows in ``newer``: all of this
        layout's rows when ``newer`` only appended fragments after them; None when rows were
        deleted, compacted or moved since (read every position again)."""
        if newer.fragments[: len(self.fragments)] == self.fragments:
            return self.rows
        return None

    def prefix_rows(self, newer: RowLayout) -> int:
        """Rows in the leading fragments both layouts share unchanged: they keep their
        positions in ``newer`` even when later fragments were compacted, deleted from or moved
        (a compaction that merged the small fragments at the end leaves the full ones before)."""
        rows = 0
        for mine, theirs in zip(self.fragments, newer.fragments):
            if mine != theirs:
                break
            rows += mine[1] - mine[3]
        return rows


Move = tuple[int, int, "int | None"]
"""``(old_start, old_end, new_start)``: the rows at positions ``old_start..old_end`` of one
fragment sit from ``new_start`` on in the newer layout; ``new_start`` None: rows of that fragment
were deleted, so which of them remain (and where) must be read again."""


def moves(old: RowLayout, newer: RowLayout) -> tuple[list[Move], list[tuple[int, int]], int] | None:
    """Where ``old``'s rows went in ``newer``: one move per old fragment (kept in place: shifted;
    deleted from, removed or rewritten: read again); the ``(position, rows)`` ranges of
    ``newer`` holding what is left of fragments deleted from; and the position in ``newer``
    from which every row is read again (fragments appended since, and any that are not the old
    ones in their old order: a compaction's output lands there, so it reads what it moved).
    None if a fragment kept its id but not its rows (never seen: read everything)."""
    out: list[Move] = []
    reread: list[tuple[int, int]] = []
    theirs_all = newer.fragments
    j = old_start = new_start = 0
    for mine in old.fragments:
        old_live = mine[1] - mine[3]
        theirs = theirs_all[j] if j < len(theirs_all) else None
        if theirs is not None and theirs[0] == mine[0]:
            if theirs[1] != mine[1]:
                return None
            new_live = theirs[1] - theirs[3]
            if mine == theirs:
                out.append((old_start, old_start + old_live, new_start))
            else:  # rows deleted from it
                out.append((old_start, old_start + old_live, None))
                reread.append((new_start, new_live))
            new_start += new_live
            j += 1
        else:  # all its rows deleted (or rewritten by a compaction: read again from the tail)
            out.append((old_start, old_start + old_live, None))
        old_start += old_live
    return out, reread, new_start


def row_layout(ds: Any) -> RowLayout:
    """The layout of a Lance dataset (None: an empty layout at version 0)."""
    if ds is None:
        return RowLayout(0, (), 0)
    frags = []
    rows = 0
    for f in ds.get_fragments():
        m = f.metadata
        d = m.deletion_file
        deleted = int(d.num_deleted_rows or 0) if d is not None else 0
        frags.append((int(m.id), int(m.physical_rows), int(d.read_version) if d is not None else -1, deleted))
        rows += int(m.physical_rows) - deleted
    return RowLayout(int(ds.version), tuple(frags), rows)
