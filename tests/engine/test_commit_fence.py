"""The Lance commit fence a new owner of a writer identity commits before replaying
(``persisting.engine.commits.fence_commits``): an append prepared on an older version fails
with a retryable conflict, everything else goes on beside it, and writers of other identities
are not disturbed."""

from __future__ import annotations

from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from persisting.engine import Table, TableOptions
from persisting.engine.commits import fence_commits, is_conflict
from persisting.errors import FencedError


def _rows(start: int, n: int) -> pa.Table:
    vec = np.random.default_rng(start).random((n, 8), dtype=np.float32)
    return pa.table({
        "seq": pa.array(range(start, start + n), pa.int64()),
        "vec": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), 8),
        "payload": pa.array([b"x" * 64] * n, pa.large_binary()),
    })


@pytest.fixture
def uri(tmp_path: Path) -> str:
    path = str(tmp_path / "t.lance")
    lance.write_dataset(_rows(0, 2000), path, data_storage_version="2.2", max_rows_per_file=500)
    lance.dataset(path).create_scalar_index("seq", "BTREE")
    return path


def test_an_append_prepared_before_the_fence_conflicts_and_nothing_else_changes(uri: str) -> None:
    stale = lance.dataset(uri)
    before = stale.to_table()
    fenced = fence_commits(uri, None)
    assert fenced is not None and fenced.version == stale.version + 1
    assert fenced.to_table().equals(before)  # same rows, same schema
    assert [i.name for i in fenced.describe_indices()] == [i.name for i in stale.describe_indices()]
    with pytest.raises(OSError) as info:
        lance.write_dataset(_rows(5000, 10), stale, mode="append")
    assert is_conflict(info.value), info.value  # retryable: a live writer re-reads and goes on
    assert lance.dataset(uri).count_rows() == 2000
    # appends on the fenced version, and maintenance from a stale view, still work
    lance.write_dataset(_rows(5000, 10), fenced, mode="append")
    stale.delete("seq < 5")
    assert lance.dataset(uri).count_rows() == 2005


def test_fence_of_a_missing_dataset_is_none(tmp_path: Path) -> None:
    assert fence_commits(str(tmp_path / "none.lance"), None) is None


def test_a_writer_of_another_identity_retries_through_a_fence(uri: str, tmp_path: Path) -> None:
    with Table(uri, options=TableOptions(durability="batch"), wal_dir=str(tmp_path / "wal")) as table:
        table.append(_rows(10_000, 5))
        fence_commits(uri, None)  # the table's view is now older than the fence
        table.append(_rows(10_005, 5))
        table.flush()
        assert table.count() == 2010
    assert sorted(lance.dataset(uri).to_table(columns=["seq"]).column("seq").to_pylist())[-10:] == list(range(10_000, 10_010))


def test_a_stale_commit_rechecks_its_owner_and_stops(uri: str, tmp_path: Path) -> None:
    """What an old owner paused inside a commit meets: its append conflicts with the fence, the
    retry runs the owner check again, and a lost lease ends it before anything lands."""
    table = Table(uri, options=TableOptions(durability="none"))
    checks: list[int] = []

    def owner_check() -> None:
        checks.append(1)
        if len(checks) > 1:
            raise FencedError("lease taken over", path=uri, epoch=1)

    stale = lance.dataset(uri)
    fence_commits(uri, None)
    with pytest.raises(FencedError):
        table._commit_data(_rows(20_000, 7), _rows(0, 1).schema, "w", 7, stale, owner_check=owner_check)
    assert len(checks) == 2  # before the first attempt, and on the retry after the conflict
    assert lance.dataset(uri).count_rows() == 2000
    table.close()
