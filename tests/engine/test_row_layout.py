"""Table.row_layout: appends keep every indexed position, deletes and compaction do not."""

from __future__ import annotations

from pathlib import Path

from persisting.engine import Table


def test_layout_tells_appends_from_moves(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri) as a, Table(uri, follow=False) as b:
        empty = b.row_layout()
        assert empty.rows == 0 and empty.version == 0
        a.append([{"k": i} for i in range(5)])
        a.flush()
        b.refresh()
        first = b.row_layout()
        assert first.rows == 5 and empty.kept_rows(first) == 0
        a.append([{"k": 5}])
        a.flush()
        assert b.row_layout() == first  # follow=False: b stays on its version until refresh
        b.refresh()
        appended = b.row_layout()
        assert first.kept_rows(appended) == 5 and appended.rows == 6
        a.delete("k = 1")
        b.refresh()
        deleted = b.row_layout()
        assert appended.kept_rows(deleted) is None and deleted.rows == 5
        a.compact()
        b.refresh()
        assert deleted.kept_rows(b.row_layout()) is None and b.row_layout().rows == 5


def test_prefix_rows_counts_the_unchanged_leading_fragments(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri) as t:
        for start in (0, 10, 20):  # three fragments of 10 rows
            t.append([{"k": i} for i in range(start, start + 10)])
            t.flush()
        three = t.row_layout()
        t.delete("k = 25")  # a deletion file on the third fragment only
        deleted = t.row_layout()
        assert three.kept_rows(deleted) is None
        assert three.prefix_rows(deleted) == 20  # the first two fragments kept their positions
        t.delete("k = 3")
        assert deleted.prefix_rows(t.row_layout()) == 0
        assert three.prefix_rows(three) == three.rows == 30


def test_layout_is_listed_once_per_version_and_follows_the_writers_own_changes(tmp_path: Path) -> None:
    """A reader polling after every write gets the cached layout while the version stands; the
    table's own deletes and compactions (which move its dataset on) give a new one."""
    uri = str(tmp_path / "t.lance")
    with Table(uri) as t:
        for start in (0, 10):
            t.append([{"k": i} for i in range(start, start + 10)])
            t.flush()
        first = t.row_layout()
        t.append([{"k": 99}])  # pending only: same version, same layout object
        assert t.row_layout() is first
        t.delete("k = 3")
        deleted = t.row_layout()
        assert deleted.version > first.version and deleted.rows == 20 and first.kept_rows(deleted) is None  # 21 - 1
        t.compact()
        compacted = t.row_layout()
        assert compacted.version > deleted.version and len(compacted.fragments) == 1 and compacted.rows == 20


def test_layout_cache_sees_a_dataset_changed_in_place(tmp_path: Path) -> None:
    """Lance's add_columns (schema evolution) moves a dataset object's version in place: the
    cached layout is keyed by the version too, not only the object."""
    import pyarrow as pa

    with Table(str(tmp_path / "t.lance")) as t:
        t.append([{"k": i} for i in range(3)])
        t.flush()
        first = t.row_layout()
        t._ds.add_columns([pa.field("extra", pa.int64())])
        again = t.row_layout()
        assert again is not first and again.version == first.version + 1 and again.rows == 3
