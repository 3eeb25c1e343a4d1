"""Row identity in the engine: Table.delete_in and RowKeys/RowFollower across writers,
deletes, compaction and another process's appends (real Lance, a real second process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from persisting.engine import RowFollower, RowKeys, Table, TableOptions
from persisting.errors import InvalidRecordError, NotFoundError

ODD = ["o'brien", "''", "a\\b", "line\nbreak", "", "%_*", "x' OR '1'='1", "ünï😀", "--", '"dq"', "`tick`"]
SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("n", pa.int64()), pa.field("odd col-x", pa.float64())])


def _table(path: str, **kw) -> Table:
    return Table(path, options=TableOptions(durability="none"), schema=SCHEMA, **kw)


def _rows(keys: list[str], start: int = 0) -> list[dict]:
    return [{"key": k, "n": start + i, "odd col-x": float(start + i) / 2} for i, k in enumerate(keys)]


def _check_map(t: Table, rk: RowKeys) -> None:
    """Every key maps to a row that holds it, and every row's key is mapped."""
    keys = t.scan(columns=["key"]).column("key").to_pylist()
    assert set(rk) == set(keys)
    for k in rk:
        assert keys[rk.position(k)] == k


def test_delete_in_quotes_odd_values_and_types(tmp_path):
    with _table(str(tmp_path / "t.lance")) as t:
        t.append(_rows(ODD + ["keep", "keep2"]))
        t.flush()
        assert t.delete_in("key", ODD) == len(ODD)
        assert sorted(t.scan(columns=["key"]).column("key").to_pylist()) == ["keep", "keep2"]
        assert t.delete_in("n", [len(ODD), 10**6]) == 1  # ints; an absent value deletes nothing
        assert t.delete_in("odd col-x", [(len(ODD) + 1) / 2]) == 1  # a column name that needs quoting
        assert t.count() == 0
        assert t.delete_in("key", []) == 0


def test_delete_in_refuses_bad_values_before_deleting(tmp_path):
    with _table(str(tmp_path / "t.lance")) as t:
        t.append(_rows(["a", "b"]))
        t.flush()
        for column, values in [("key", ["a", 3]), ("key", [None]), ("n", ["1"]), ("n", [True]),
                               ("odd col-x", [float("nan")]), ("key", ["a\x00"])]:
            with pytest.raises(InvalidRecordError, match=column):
                t.delete_in(column, values)
        with pytest.raises(NotFoundError, match="nope"):
            t.delete_in("nope", ["a"])
        assert t.count() == 2


def test_delete_in_long_list_across_writers(tmp_path):
    path = str(tmp_path / "t.lance")
    keys = [f"k'{i}" for i in range(2500)]
    with _table(path) as a, _table(path) as b:
        a.append(_rows(keys[:1250]))
        a.flush()
        b.append(_rows(keys[1250:], 1250))
        b.flush()
        # a deletes b's rows and its own by key, in several predicates, and b sees it
        assert a.delete_in("key", keys[::2] + ["missing"]) == 1250
        assert b.count() == 1250
        assert set(b.scan(columns=["key"]).column("key").to_pylist()) == set(keys[1::2])


def test_follower_reads_only_appends_and_everything_after_delete(tmp_path):
    path = str(tmp_path / "t.lance")
    with _table(path, follow=False) as t, _table(path) as other:
        t.append(_rows(["a", "b"]))
        t.flush()
        f = RowFollower(t, ["key"])
        first = f.changes()
        assert first is not None and first.replaced and first.column("key") == ["a", "b"]
        assert f.changes() is None
        other.append(_rows(["c"]))
        other.flush()
        assert f.changes() is None  # follow=False: not seen until refreshed
        t.refresh()
        c = f.changes()
        assert c is not None and not c.replaced and c.start == 2 and c.column("key") == ["c"]
        other.delete_in("key", ["a"])
        t.refresh()
        c = f.changes()
        assert c is not None and c.replaced and c.column("key") == ["b", "c"]
        t.append(_rows(["d"]))  # buffered rows are part of a change, then read again when committed
        c = f.changes()
        assert c is not None and c.column("key")[-1] == "d"
        t.flush()
        c = f.changes()
        assert c is not None and c.replaced and c.column("key") == ["b", "c", "d"]


_CHILD = textwrap.dedent(
    """
    import sys
    from persisting.engine import Table, TableOptions
    sys.path.insert(0, {here!r})
    from test_rowkeys import SCHEMA, _rows
    with Table({path!r}, options=TableOptions(durability="none"), schema=SCHEMA) as t:
        t.append(_rows([f"p{{i}}" for i in range(50)], 1000))
        t.flush()
    """
)


def test_rowkeys_after_delete_compaction_and_another_process_append(tmp_path):
    import os

    path = str(tmp_path / "t.lance")
    with _table(path) as t:
        for g in range(4):  # four fragments
            t.append(_rows([f"k{g}-{i}" for i in range(20)], g * 20))
            t.flush()
        rk = RowKeys(t, "key", values=["n"])
        _check_map(t, rk)
        t.delete_in("key", [f"k1-{i}" for i in range(20)] + ["k0-3", "k3-19"])
        assert rk.sync()
        _check_map(t, rk)
        assert "k1-5" not in rk and rk.value("n", "k2-0") == 40
        t.compact()
        rk.sync()
        _check_map(t, rk)
        subprocess.run(
            [sys.executable, "-c", _CHILD.format(here=os.path.dirname(__file__), path=path)],
            check=True, timeout=120,
        )
        assert rk.sync()  # t follows: the other process's rows appear
        _check_map(t, rk)
        assert rk.value("n", "p49") == 1049 and len(rk) == 80 - 22 + 50
        assert not rk.sync()


def _apply(change, held: dict[str, int]) -> dict[str, int]:
    """A key -> position map brought to a change the way a moves-tracking caller does."""
    if change.replaced:
        held = {}
    elif change.moves is not None:
        starts = [m[0] for m in change.moves]
        out = {}
        for k, p in held.items():
            j = max(i for i, s in enumerate(starts) if s <= p)
            old_start, old_end, new_start = change.moves[j]
            if new_start is not None and p < old_end:
                out[k] = p - old_start + new_start
        held = out  # keys of fragments deleted from (and the tail) come back with the rows read
    for i, k in enumerate(change.column("key")):
        held[k] = change.position(i)
    return held


@pytest.mark.parametrize("seed", range(4))
def test_tracked_moves_match_a_full_scan(tmp_path, seed):
    """Deletes in place (by this handle and another), appends, pending rows and compaction, at
    random: the moves and the rows read again always give every key its scanned position, and
    deletes read only the fragments deleted from (plus the tail), never every row."""
    import random

    rng = random.Random(seed)
    path = str(tmp_path / "t.lance")
    n = 0
    with _table(path, follow=False) as t, _table(path) as other:
        f = RowFollower(t, ["key"], track_moves=True)
        held: dict[str, int] = {}
        reads_after_delete = []
        for step in range(40):
            action = rng.random()
            live = t.scan(columns=["key"]).column("key").to_pylist()
            if action < 0.35:
                writer = t if rng.random() < 0.6 else other
                writer.append(_rows([f"k{n + i}" for i in range(rng.randint(1, 30))], n))
                n += 30
                if rng.random() < 0.7:
                    writer.flush()
            elif action < 0.8 and live:
                doomed = rng.sample(live, min(len(live), rng.randint(1, 3)))
                (t if rng.random() < 0.7 else other).delete_in("key", doomed)
            elif action < 0.85:
                t.compact()
            t.refresh()
            change = f.changes()
            if change is None:
                continue
            if change.moves is not None:
                reads_after_delete.append(change.rows.num_rows)
            held = _apply(change, held)
            keys = t.scan(columns=["key"]).column("key").to_pylist()
            assert held == {k: i for i, k in enumerate(keys)}, step
        assert reads_after_delete  # the moves path ran
        assert min(reads_after_delete) < len(keys)  # and read less than every row at least once


def _three_fragments(tmp_path) -> Table:
    """A table of three committed fragments of ten rows: k0..k9, k10..k19, k20..k29."""
    t = _table(str(tmp_path / "t.lance"))
    for start in (0, 10, 20):
        t.append(_rows([f"k{i}" for i in range(start, start + 10)], start))
        t.flush()
    return t


def test_a_fragment_deleted_whole_is_skipped(tmp_path):
    """Lance drops a fragment whose rows are all deleted: the rows after it shift, none is read."""
    with _three_fragments(tmp_path) as t:
        f = RowFollower(t, ["key"], track_moves=True)
        held = _apply(f.changes(), {})
        t.delete_in("key", [f"k{i}" for i in range(10, 20)])
        c = f.changes()
        assert c.moves is not None and c.rows.num_rows == 0
        held = _apply(c, held)
        assert held == {k: i for i, k in enumerate(t.scan(columns=["key"]).column("key").to_pylist())}


def test_moves_after_a_delete_a_compaction_and_invalidate(tmp_path):
    with _three_fragments(tmp_path) as t:
        f = RowFollower(t, ["key"], track_moves=True)
        assert f.changes().replaced  # the first read is of every row
        t.delete_in("key", ["k12"])
        c = f.changes()
        assert c.moves is not None and not c.replaced
        assert c.moves[0] == (0, 10, 0) and c.moves[1] == (10, 20, None) and c.moves[2] == (20, 30, 19)
        assert c.column("key") == [f"k{i}" for i in range(10, 20) if i != 12]  # only that fragment
        assert c.positions.tolist() == list(range(10, 19))
        t.compact()  # rows rewritten into a new fragment: all of them come back as read again
        c = f.changes()
        assert c.moves is not None and c.column("key") == t.scan(columns=["key"]).column("key").to_pylist()
        f.invalidate()
        t.delete_in("key", ["k0"])
        c = f.changes()
        assert c.replaced and c.moves is None  # after invalidate: every row
