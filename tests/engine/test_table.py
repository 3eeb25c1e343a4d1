"""Table: reads over flushed + buffered rows, versions, compaction, evolution, blobs."""

from __future__ import annotations

import os

import lance
import numpy as np
import pyarrow as pa
import pytest

from persisting.engine import Table, TableOptions
from persisting.engine.codec import decode_tensor, encode_tensor
from persisting.engine.commits import writer_applied_lsn
from persisting.errors import NotFoundError, SchemaError


@pytest.fixture
def uri(tmp_path: os.PathLike[str]) -> str:
    return os.path.join(tmp_path, "t.lance")


def rows(start: int, n: int) -> list[dict[str, object]]:
    return [{"seq": i, "text": f"r{i}"} for i in range(start, start + n)]


def test_reads_see_flushed_and_buffered_rows_in_order(uri: str) -> None:
    with Table(uri, options=TableOptions(flush_rows=10_000)) as t:
        t.append(rows(0, 5))
        t.flush()
        t.append(rows(5, 5))
        assert t.stats()["buffered_rows"] == 5
        assert t.count() == 10
        assert t.scan().column("seq").to_pylist() == list(range(10))
        assert t.scan(offset=3, limit=4).column("seq").to_pylist() == [3, 4, 5, 6]
        assert t.scan(offset=7).column("seq").to_pylist() == [7, 8, 9]
        assert t.scan(filter="seq >= 4 AND seq < 7").column("seq").to_pylist() == [4, 5, 6]
        assert t.count(filter="seq > 7") == 2
        assert t.take([9, 0, 5]).column("seq").to_pylist() == [9, 0, 5]
        batches = list(t.iter_batches(batch_rows=3))
        assert sum(b.num_rows for b in batches) == 10
        with pytest.raises(NotFoundError, match="position 10"):
            t.take([10])


def test_each_writer_has_its_own_lsns(uri: str) -> None:
    with Table(uri) as t:
        lsns = [t.append(rows(i, 1)) for i in range(4)]
        first = t.writer_id
    assert lsns == [1, 2, 3, 4]
    assert writer_applied_lsn(lance.dataset(uri), first) == 4
    with Table(uri) as t:
        assert t.writer_id != first
        assert t.applied_lsn == 0
        assert t.append(rows(4, 1)) == 1
        assert t.scan().column("seq").to_pylist() == list(range(5))


def test_versions_tags_and_checkout(uri: str) -> None:
    with Table(uri) as t:
        t.append(rows(0, 3))
        t.tag("first")
        t.append(rows(3, 3))
        t.flush()
        assert t.tags() == {"first": 1}
        assert len(t.versions()) == 2
        old = t.checkout("first")
        assert old.read_only
        assert old.scan().column("seq").to_pylist() == [0, 1, 2]
        assert t.checkout(2).count() == 6
        with pytest.raises(NotFoundError):
            t.checkout("no-such-tag")
        t.delete_tag("first")
        assert t.tags() == {}


def test_compaction_keeps_rows_order_and_applied_lsn(uri: str) -> None:
    opts = TableOptions(flush_rows=10, compact_fragments=5)
    with Table(uri, options=opts) as t:
        for i in range(0, 100, 10):
            t.append(rows(i, 10))
        assert t.stats()["fragments"] < 5
        last, wid = t.last_lsn, t.writer_id
    ds = lance.dataset(uri)
    assert writer_applied_lsn(ds, wid) == last  # found behind the compaction commits
    with Table(uri) as t:
        assert t.scan().column("seq").to_pylist() == list(range(100))


def test_cleanup_keeps_applied_lsn_and_tagged_versions(uri: str) -> None:
    with Table(uri, options=TableOptions(flush_rows=5, compact_fragments=0, background_flush=False)) as t:
        for i in range(0, 30, 5):
            t.append(rows(i, 5))
        t.tag("keep", 2)
        t.compact()
        t.cleanup(retain_versions=1)
        last, wid = t.last_lsn, t.writer_id
        versions = [v["version"] for v in t.versions()]
        assert 2 in versions and len(versions) <= 3
    # cleanup removed the transactions that carried the LSN; the config kept it
    assert writer_applied_lsn(lance.dataset(uri), wid) == last
    with Table(uri) as t:
        assert t.checkout("keep").count() == 10
        assert t.count() == 30


def test_delete_rows(uri: str) -> None:
    with Table(uri) as t:
        t.append(rows(0, 10))
        t.delete("seq % 2 = 0")
        assert t.scan().column("seq").to_pylist() == [1, 3, 5, 7, 9]
        assert t.count() == 5
        t.append(rows(10, 1))
        assert t.take([5]).column("seq").to_pylist() == [10]


def test_schema_evolution_through_flushes(uri: str) -> None:
    with Table(uri) as t:
        t.append([{"a": 1, "s": "x"}])
        t.flush()
        t.append([{"a": 2, "extra": [1, 2]}])  # new nullable column
        t.flush()
        t.append([{"a": 2.5}])  # int -> float widening rewrites the stored column
        t.flush()
        with pytest.raises(SchemaError, match="'s'.*string.*int64"):
            t.append([{"s": 7}])
        assert t.scan().to_pydict() == {"a": [1.0, 2.0, 2.5], "s": ["x", None, None], "extra": [None, [1, 2], None]}
    with Table(uri, read_only=True) as t:
        assert t.schema is not None and t.schema.field("a").type == pa.float64()
        assert t.count() == 3


def test_int32_widens_in_place(uri: str) -> None:
    with Table(uri) as t:
        t.append(pa.table({"a": pa.array([1], pa.int32())}))
        t.flush()
        t.append(pa.table({"a": pa.array([2**40], pa.int64())}))
        t.flush()
        assert t.scan().column("a").to_pylist() == [1, 2**40]


def test_blob_column_round_trip_with_checksums(uri: str) -> None:
    schema = pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("dtype", pa.string()),
            pa.field("shape", pa.list_(pa.int64())),
            pa.field("checksum", pa.binary()),
            pa.field("payload", pa.large_binary(), metadata={"lance-encoding:blob": "true"}),
        ]
    )
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(6)]
    with Table(uri, schema=schema, options=TableOptions(durability="none")) as t:
        for i, a in enumerate(arrays):
            e = encode_tensor(a, compression="zstd" if i % 2 else None)
            t.append([{"key": f"k{i}", "dtype": e.dtype, "shape": list(e.shape), "checksum": e.checksum,
                       "payload": bytes(e.data), "codec": e.compression}])
            if i == 2:
                t.flush()
        assert t.read_blobs("payload", [0])[0] is not None
        t.flush()
    with Table(uri, read_only=True) as t:
        assert t.schema is not None
        assert t.schema.field("payload").metadata == {b"lance-encoding:blob": b"true"}
        got = t.take([5, 1, 3])
        for row, idx in zip(got.to_pylist(), [5, 1, 3]):
            out = decode_tensor(row["payload"], dtype=row["dtype"], shape=row["shape"],
                                checksum_=row["checksum"], compression=row["codec"])
            np.testing.assert_array_equal(out, arrays[idx])


def test_durability_none_writes_no_wal(uri: str) -> None:
    with Table(uri, options=TableOptions(durability="none")) as t:
        t.append(rows(0, 3))
        assert t.stats()["wal_size_bytes"] == 0
        wal_dir = t.wal_dir
    assert wal_dir is not None and [f for f in os.listdir(wal_dir) if f.endswith(".wal")] == []
    with Table(uri) as t:
        assert t.count() == 3


def test_wal_segments_rotate_and_are_dropped_after_flush(uri: str) -> None:
    opts = TableOptions(durability="batch", max_wal_size=4096, flush_rows=1_000_000)
    with Table(uri, options=opts) as t:
        for i in range(50):
            t.append(rows(i * 10, 10))
        assert t.writer_wal_dir is not None
        segments = [f for f in os.listdir(t.writer_wal_dir) if f.endswith(".wal")]
        assert len(segments) > 3
        t.flush()
        segments = [f for f in os.listdir(t.writer_wal_dir) if f.endswith(".wal")]
        assert len(segments) == 1  # only the fresh, empty active segment
        assert t.stats()["wal_size_bytes"] < 100


def test_background_commits_keep_every_row_visible_once_and_in_order(uri: str) -> None:
    opts = TableOptions(flush_rows=300, background_flush=True, compact_fragments=8)
    expected = 0
    with Table(uri, options=opts) as t:
        for b in range(40):
            t.append(rows(b * 100, 100))
            expected += 100
            # whatever the background committer is doing, every row is visible exactly once
            assert t.count() == expected
            tail = t.scan(offset=expected - 150 if expected > 150 else 0).column("seq").to_pylist()
            assert tail == list(range(max(0, expected - 150), expected))
            assert t.take([expected - 1, 0]).column("seq").to_pylist() == [expected - 1, 0]
        assert t.count(filter="seq % 100 = 0") == 40
        t.flush()
        assert t.stats()["buffered_rows"] == 0
        assert t.applied_lsn == t.last_lsn == 40
    with Table(uri, read_only=True) as t:
        assert t.scan().column("seq").to_pylist() == list(range(4000))


def test_concurrent_appenders_get_unique_lsns_and_lose_nothing(uri: str) -> None:
    import threading

    lsns: list[int] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for i in range(50):
            lsn = t.append([{"seq": k * 1000 + i, "text": "w"}])
            with lock:
                lsns.append(lsn)

    with Table(uri, options=TableOptions(flush_rows=37)) as t:
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert sorted(lsns) == list(range(1, 201))
    with Table(uri) as t:
        seqs = t.scan().column("seq").to_pylist()
    assert sorted(seqs) == sorted(k * 1000 + i for k in range(4) for i in range(50))
    for k in range(4):  # each writer's rows keep their order
        mine = [s for s in seqs if s // 1000 == k]
        assert mine == sorted(mine)


def test_many_single_record_appends_keep_order_across_merged_runs(uri: str) -> None:
    with Table(uri, options=TableOptions(flush_rows=700)) as t:
        for i in range(1500):
            t.append([{"seq": i, "text": f"r{i}"}])
            if i in (255, 256, 511, 1000):
                assert t.take([i]).column("seq").to_pylist() == [i]
        assert t.scan().column("seq").to_pylist() == list(range(1500))
    with Table(uri, read_only=True) as t:
        assert t.scan(columns=["seq"]).column("seq").to_pylist() == list(range(1500))


def test_int_to_float_widening_never_fails_at_commit(uri: str) -> None:
    big = 2**60 + 1  # not exactly representable as a float64
    with Table(uri) as t:
        t.append([{"x": big}])
        t.append([{"x": 0.5}])  # widens the column to float64 while `big` is still buffered
        t.flush()  # must not raise: the row was acknowledged
        assert t.scan().column("x").to_pylist() == [float(big), 0.5]


def test_reader_sees_new_commits_without_reopening(uri: str) -> None:
    with Table(uri) as w:
        w.append(rows(0, 3))
        w.flush()
        r = Table(uri, read_only=True)
        assert r.count() == 3
        w.append(rows(3, 2))  # acknowledged, only in the writer's WAL: not visible yet
        w.sync()
        assert r.count() == 3
        w.flush()  # visible to every reader once the flush returns
        assert r.scan().column("seq").to_pylist() == list(range(5))
        w.append(rows(5, 1))
        w.flush()
        assert r.count() == 6
        pinned = Table(uri, read_only=True, follow=False)
        w.append(rows(6, 1))
        w.flush()
        assert pinned.count() == 7 - 1
        pinned.refresh()
        assert pinned.count() == 7
        pinned.close()
        assert r.read_blobs  # read-only tables expose reads only
        r.close()


def test_read_blobs_direct_path_matches_take(uri: str) -> None:
    schema = pa.schema([pa.field("k", pa.int64()),
                        pa.field("b", pa.large_binary(), metadata={"lance-encoding:blob": "true"})])
    with Table(uri, schema=schema, options=TableOptions(durability="none")) as t:
        t.append([{"k": i, "b": bytes([i]) * (i + 1)} for i in range(10)])
        t.flush()
        t.append([{"k": 10, "b": b"pending"}])
        assert t.read_blobs("b", [3, 0, 9]) == [b"\x03" * 4, b"\x00", b"\x09" * 10]
        assert t.read_blobs("b", [10, 2]) == [b"pending", b"\x02" * 3]  # mixed: through take()
