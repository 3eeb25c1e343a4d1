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
