"""LanceBackend and PersistingBackend called directly: the shared conformance suite (which
Pulsing's MemoryBackend passes too), then what only a durable backend promises."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from persisting.engine import Table
from persisting.errors import ClosedError, LockedError
from persisting.queue import LanceBackend, PersistingBackend

_spec = importlib.util.spec_from_file_location("_persisting_queue_suite", Path(__file__).with_name("queue_backend_suite.py"))
assert _spec is not None and _spec.loader is not None
suite = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = suite
_spec.loader.exec_module(suite)
BackendSuite, rec, run, seqs, collect = suite.BackendSuite, suite.rec, suite.run, suite.seqs, suite.collect

pulsing_streaming = pytest.importorskip("pulsing.streaming")


class TestMemoryBackend(BackendSuite):
    """The reference: Pulsing's own in-memory backend passes the same suite."""

    def make(self, tmp_path: Path) -> Any:
        return pulsing_streaming.MemoryBackend(bucket_id=0, storage_path=str(tmp_path), batch_size=100)


class TestLanceBackend(BackendSuite):
    def make(self, tmp_path: Path) -> Any:
        return LanceBackend(bucket_id=0, storage_path=str(tmp_path / "q"), batch_size=100, flush_threshold=64)


class TestPersistingBackend(BackendSuite):
    def make(self, tmp_path: Path) -> Any:
        return PersistingBackend(bucket_id=0, storage_path=str(tmp_path / "q"), batch_size=100, compression="zstd")


class TestPersistingBackendWAL(BackendSuite):
    def make(self, tmp_path: Path) -> Any:
        return PersistingBackend(
            bucket_id=0, storage_path=str(tmp_path / "q"), batch_size=100,
            enable_wal=True, wal_sync_interval=0, flush_threshold=100, enable_metrics=True,
        )


DURABLE = [
    pytest.param(LanceBackend, {}, id="lance"),
    pytest.param(PersistingBackend, {}, id="persisting"),
    pytest.param(PersistingBackend, {"enable_wal": True, "wal_sync_interval": 0.05}, id="persisting-wal"),
]


@pytest.mark.parametrize(("cls", "options"), DURABLE)
def test_offsets_are_stable_across_restarts(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    path = str(tmp_path / "q")

    async def go() -> None:
        b = cls(bucket_id=3, storage_path=path, flush_threshold=16, **options)
        await b.put_batch([rec(i) for i in range(20)])
        for i in range(20, 30):
            await b.put(rec(i))
        before = await b.get(100, 0)
        b.close()
        b = cls(bucket_id=3, storage_path=path, flush_threshold=16, **options)
        assert b.total_count() == 30
        assert await b.get(100, 0) == before
        assert seqs(await b.get(3, 26)) == [26, 27, 28]
        await b.put(rec(30))
        assert seqs(await b.get(2, 29)) == [29, 30]
        b.close()

    run(go())


def test_lance_backend_commits_every_flush_threshold_records(tmp_path: Path) -> None:
    async def go() -> None:
        b = LanceBackend(bucket_id=0, storage_path=str(tmp_path), flush_threshold=10)
        for i in range(25):
            await b.put(rec(i))
        deadline = time.monotonic() + 30
        while (stats := await b.stats())["persisted_count"] < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the table commits in the background
        assert stats["persisted_count"] in (10, 20)  # whole thresholds only
        assert stats["persisted_count"] + stats["buffer_count"] == stats["total_count"] == 25
        assert stats["flush_threshold"] == 10 and stats["backend"] == "lance"
        await b.flush()
        assert (await b.stats())["persisted_count"] == 25
        b.close()

    run(go())


def test_default_flush_thresholds(tmp_path: Path) -> None:
    async def go() -> None:
        for cls, options, expected in [
            (LanceBackend, {}, 1000),
            (PersistingBackend, {}, 1000),
            (PersistingBackend, {"enable_wal": True}, 10_000),
        ]:
            b = cls(bucket_id=0, storage_path=str(tmp_path / f"{cls.__name__}{len(options)}"), **options)
            assert (await b.stats())["flush_threshold"] == expected
            b.close()

    run(go())


def test_persisting_stats_keys_and_metrics(tmp_path: Path) -> None:
    async def go() -> None:
        b = PersistingBackend(bucket_id=1, storage_path=str(tmp_path / "m"), enable_wal=True, compression="lz4",
                              enable_metrics=True)
        await b.put_batch([rec(i) for i in range(12)])
        await b.get(5, 0)
        stats = await b.stats()
        for key in ("bucket_id", "total_count", "buffer_count", "persisted_count", "storage_path", "wal_size",
                    "compression", "metrics"):
            assert key in stats, key
        assert stats["total_count"] == 12 and stats["buffer_count"] == 12 and stats["persisted_count"] == 0
        assert stats["compression"] == "lz4" and stats["wal_size"] > 0 and stats["durability"] == "batch"
        metrics = stats["metrics"]
        assert metrics["persisting_records_total"] >= 12
        assert metrics["persisting_wal_size_bytes"] == stats["wal_size"]
        assert metrics["persisting_bytes_read_total"] > 0
        await b.flush()
        stats = await b.stats()
        assert stats["persisted_count"] == 12 and stats["buffer_count"] == 0
        assert stats["metrics"]["persisting_flush_duration_seconds_count"] >= 1
        b.close()
        plain = PersistingBackend(bucket_id=1, storage_path=str(tmp_path / "p"))
        assert "metrics" not in await plain.stats()
        plain.close()

    run(go())


@pytest.mark.parametrize(("compression", "encoding"), [("zstd", "zstd"), ("lz4", "lz4")])
def test_compression_is_the_lance_column_encoding(tmp_path: Path, compression: str, encoding: str) -> None:
    async def go() -> None:
        b = PersistingBackend(bucket_id=0, storage_path=str(tmp_path), compression=compression)
        await b.put_batch([rec(i) for i in range(5)])
        await b.put({"id": "x", "seq": 5, "score": 1.0, "text": "t", "added": "later"})  # a new column
        await b.flush()
        assert (await b.stats())["column_encoding"] == encoding
        b.close()
        table = Table(str(tmp_path / "bucket_0.lance"), read_only=True)
        assert table.schema is not None
        text = [f for f in table.schema if pa.types.is_string(f.type)]
        assert [f.name for f in text] == ["id", "text", "added"]
        for field in text:  # Lance compresses variable-width columns; numbers keep their encoding
            assert (field.metadata or {}).get(b"lance-encoding:compression") == encoding.encode(), field.name
        assert table.count() == 6
        table.close()

    run(go())


@pytest.mark.parametrize(("cls", "options"), DURABLE)
def test_schema_evolution_new_fields_and_widening(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put({"id": "a", "n": 1})
        await b.put({"id": "b", "n": 2, "tag": "new"})  # gains a field
        await b.put({"id": "c", "n": 2.5})  # int -> float
        await b.flush()
        await b.put({"id": "d", "n": 4, "extra": [1, 2]})
        rows = await b.get(10, 0)
        assert rows == [
            {"id": "a", "n": 1.0, "tag": None, "extra": None},
            {"id": "b", "n": 2.0, "tag": "new", "extra": None},
            {"id": "c", "n": 2.5, "tag": None, "extra": None},
            {"id": "d", "n": 4.0, "tag": None, "extra": [1, 2]},
        ]
        b.close()
        again = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        assert await again.get(10, 0) == rows
        again.close()

    run(go())


def test_a_second_writer_on_the_same_bucket_is_refused(tmp_path: Path) -> None:
    first = PersistingBackend(bucket_id=0, storage_path=str(tmp_path), enable_wal=True)
    with pytest.raises(LockedError):
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), enable_wal=True)
    other = PersistingBackend(bucket_id=1, storage_path=str(tmp_path), enable_wal=True)  # another bucket is fine
    first.close()
    other.close()


def test_dropping_a_backend_commits_its_buffer_and_frees_the_bucket(tmp_path: Path) -> None:
    async def write() -> None:
        b = LanceBackend(bucket_id=0, storage_path=str(tmp_path))
        await b.put_batch([rec(i) for i in range(7)])  # below flush_threshold: only buffered

    run(write())
    gc.collect()
    b = LanceBackend(bucket_id=0, storage_path=str(tmp_path))
    assert b.total_count() == 7
    b.close()
    with pytest.raises(ClosedError):
        run(b.put(rec(0)))
    b.close()  # idempotent


def test_a_reader_waiting_on_one_thread_wakes_on_a_put_from_another(tmp_path: Path) -> None:
    b = PersistingBackend(bucket_id=0, storage_path=str(tmp_path), enable_wal=True)

    def writer() -> None:
        time.sleep(0.2)
        asyncio.run(b.put(rec(0)))

    thread = threading.Thread(target=writer)
    start = time.monotonic()
    thread.start()
    chunks = run(collect(b.get_stream(1, 0, wait=True, timeout=10)))
    thread.join()
    assert seqs([r for c in chunks for r in c]) == [0]
    assert time.monotonic() - start < 5
    b.close()


def test_close_wakes_waiting_readers(tmp_path: Path) -> None:
    b = LanceBackend(bucket_id=0, storage_path=str(tmp_path))

    async def go() -> None:
        reader = asyncio.create_task(collect(b.get_stream(1, 0, wait=True, timeout=30)))
        await asyncio.sleep(0.05)
        b.close()
        with pytest.raises(ClosedError):
            await asyncio.wait_for(reader, 5)

    run(go())


def test_caller_can_reuse_its_record_dict(tmp_path: Path) -> None:
    async def go() -> None:
        b = LanceBackend(bucket_id=0, storage_path=str(tmp_path))
        record = {"id": "a", "seq": 0}
        await b.put(record)
        await b.put(record)  # the schema is known now: the fast path keeps dicts
        record["seq"] = 99
        assert seqs(await b.get(10, 0)) == [0, 0]
        b.close()

    run(go())


def test_register_adds_both_backends_to_pulsing() -> None:
    import persisting.queue

    persisting.queue.register()
    assert pulsing_streaming.get_backend_class("lance") is LanceBackend
    assert pulsing_streaming.get_backend_class("persisting") is PersistingBackend
    assert isinstance(PersistingBackend, type)


@pytest.mark.parametrize(("cls", "options"), DURABLE)
def test_windows_across_the_commit_boundary(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    """Reads that span committed and buffered records, after every put, as commits happen."""

    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), flush_threshold=10, **options)
        for i in range(35):
            if i % 5 == 4:
                await b.put_batch([rec(i)])
            else:
                await b.put(rec(i))
            n = i + 1
            for offset, limit in ((0, n), (max(0, n - 7), 5), (max(0, n - 3), 10), (n // 2, 3)):
                assert seqs(await b.get(limit, offset)) == list(range(offset, min(n, offset + limit)))
        await b.flush()
        assert (await b.stats())["persisted_count"] == 35
        assert seqs(await b.get(100, 0)) == list(range(35))
        b.close()

    run(go())


@pytest.mark.parametrize(("cls", "options"), DURABLE)
def test_records_of_every_shape_round_trip(tmp_path: Path, cls: type, options: dict[str, Any]) -> None:
    shapes: list[dict[str, Any]] = [
        {"id": "a", "n": 1, "ok": True, "raw": b"\x00\x01", "f": 0.5},
        {"id": "b", "n": None, "ok": False, "raw": None, "f": 1.5},
        {"id": "c"},  # fields missing
        {"id": "d", "tags": ["x", "y"], "meta": {"k": 1}},  # nested values
        {"id": "e", "n": 2, "ok": True, "raw": b"", "f": 2.0, "tags": [], "meta": {"k": 2}},
    ]
    columns = ["id", "n", "ok", "raw", "f", "tags", "meta"]
    expected = [{c: s.get(c) for c in columns} for s in shapes]

    async def go() -> None:
        b = cls(bucket_id=0, storage_path=str(tmp_path), **options)
        await b.put(shapes[0])
        await b.put_batch(shapes[1:3])  # keys differ within the batch
        for s in shapes[3:]:
            await b.put(s)
        assert await b.get(10, 0) == expected
        await b.flush()
        assert await b.get(10, 0) == expected
        b.close()

    run(go())


def test_a_record_with_nothing_storable_is_refused(tmp_path: Path) -> None:
    from persisting.errors import InvalidRecordError

    async def go() -> None:
        b = LanceBackend(bucket_id=0, storage_path=str(tmp_path))
        with pytest.raises(InvalidRecordError, match="only None values"):
            await b.put({"unknown": None})
        await b.put({"id": "a", "later": None})
        assert await b.get(10, 0) == [{"id": "a"}]
        b.close()

    run(go())
