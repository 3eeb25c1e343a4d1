"""Background commits under a fast writer: rows that arrive during a commit gather into the
next one (fewer, larger commits), and the buffer stays bounded (appends wait)."""

from __future__ import annotations

from pathlib import Path

import lance
import pyarrow as pa

from persisting.engine import Table, TableOptions
from persisting.engine.table import _BACKPRESSURE_ROWS


def _batch(start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"seq": pa.array(range(start, start + n), pa.int64())})


def test_a_fast_writer_gets_larger_commits_and_a_bounded_buffer(tmp_path: Path) -> None:
    flush_rows, n = 10, 20_000
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=TableOptions(durability="none", flush_rows=flush_rows)) as table:
        most = 0
        for i in range(n):
            table.append(_batch(i, 1))
            most = max(most, table._pending.buffer_rows)
        table.flush()
        assert most <= _BACKPRESSURE_ROWS * flush_rows + 1  # the limit plus the batch just added
        assert table.count() == n
    ds = lance.dataset(uri)
    assert sorted(ds.to_table().column("seq").to_pylist()) == list(range(n))
    commits = ds.version
    assert commits < n / (8 * flush_rows), f"{commits} commits for {n} rows: rows did not gather"


def test_a_batch_larger_than_the_limit_is_taken_and_committed(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri, options=TableOptions(durability="none", flush_rows=10)) as table:
        for k in range(5):
            table.append(_batch(k * 5_000, 5_000))  # each 500 x flush_rows
        table.flush()
    assert lance.dataset(uri).count_rows() == 25_000
