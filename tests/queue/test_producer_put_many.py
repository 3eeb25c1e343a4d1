"""Producer.put_many through real Pulsing, buckets and WAL on moto S3 with dedup: every record
is stored once, in order per bucket; a group whose acknowledgement was lost after the bucket
logged it is retried and stored once; bad input is refused, typed, before anything is sent."""

from __future__ import annotations

import asyncio
import gc
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pul = pytest.importorskip("pulsing")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

import persisting.queue
from persisting.errors import ConfigError, InvalidRecordError
from persisting.queue import Producer

TOPIC = "events"
BUCKETS = 4


def _options(s3_bucket: str, s3_options: dict[str, str]) -> dict[str, Any]:
    return {"uri": f"s3://{s3_bucket}/queues", "storage_options": s3_options, "wal": "object",
            "wal_lease_seconds": 1.5, "dedup": True}


async def _open(tmp_path: Path, options: dict[str, Any]) -> tuple[Any, Any]:
    persisting.queue.register()
    system = await pul.actor_system()
    writer = await persisting.queue.write_queue(system, TOPIC, num_buckets=BUCKETS, storage_path=str(tmp_path),
                                                backend="persisting", backend_options=options)
    return system, writer


async def _close(system: Any) -> None:
    await system.shutdown()
    await asyncio.sleep(0.3)
    gc.collect()


async def _read(system: Any, tmp_path: Path, options: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    reader = await persisting.queue.read_queue(system, TOPIC, num_buckets=BUCKETS, storage_path=str(tmp_path),
                                               backend="persisting", backend_options=options)
    return {b: await reader.queue.get(bucket_id=b, limit=1_000_000) for b in range(BUCKETS)}


def _check_once_in_order(buckets: dict[int, list[dict[str, Any]]], queue: Any, expected: int) -> None:
    seqs = []
    for bucket, rows in buckets.items():
        got = [r["_seq"] for r in rows]
        assert got == sorted(got), f"bucket {bucket} out of order"
        assert all(queue._hash_partition(r["id"]) == bucket for r in rows)
        seqs += got
    assert sorted(seqs) == list(range(1, expected + 1))


class LostAck:
    """The real bucket proxy whose first ``put_batch`` reaches the bucket (logged) but whose
    acknowledgement is lost on the way back, as when the owner dies right after logging."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.lost = 0

    async def put_batch(self, records: list[dict[str, Any]]) -> Any:
        await self.proxy.put_batch(records)
        self.lost += 1
        raise pul.exceptions.PulsingRuntimeError("connection reset before the acknowledgement")


def test_put_many_stores_every_record_once_in_order(tmp_path: Path, s3_bucket: str, s3_options: dict[str, str]) -> None:
    options = _options(s3_bucket, s3_options)

    async def go() -> None:
        system, writer = await _open(tmp_path, options)
        try:
            producer = Producer(writer, producer_id="p1", deadline=30, retry_interval=0.05)
            records = [{"id": f"user-{i % 37}", "n": i} for i in range(600)]
            results = await producer.put_many(records[:100])  # one put_batch per bucket
            assert [r["bucket_id"] for r in results] == [writer.queue._hash_partition(r["id"]) for r in records[:100]]
            await producer.put_many(records[100:], max_batch=50)  # huge groups split, in order
            assert producer.seq == 600 and producer.retries == 0
            assert "_seq" not in records[0]  # the caller's dicts are not changed
            # two put_many calls at once: the second waits, so no bucket sees its records first
            await asyncio.gather(producer.put_many(records[:40]), producer.put_many(records[40:80]))
            buckets = await _read(system, tmp_path, options)
            _check_once_in_order(buckets, writer.queue, 680)
            by_seq = {r["_seq"]: r for rows in buckets.values() for r in rows}
            assert [by_seq[s]["n"] for s in range(1, 601)] == list(range(600))
            assert all(r["_producer"] == "p1" for r in by_seq.values())
        finally:
            await _close(system)

    asyncio.run(go())


def test_a_group_logged_but_unacknowledged_is_stored_once(tmp_path: Path, s3_bucket: str, s3_options: dict[str, str]) -> None:
    options = _options(s3_bucket, s3_options)

    async def go() -> None:
        system, writer = await _open(tmp_path, options)
        try:
            queue = writer.queue
            producer = Producer(writer, producer_id="p2", deadline=30, retry_interval=0.05)
            await producer.put_many([{"id": f"k{i}", "n": i} for i in range(40)])
            target = queue._hash_partition("k0")
            lossy = LostAck(await queue._ensure_bucket(target))
            queue._bucket_refs[target] = lossy
            await producer.put_many([{"id": f"k{i}", "n": i} for i in range(40, 200)])
            assert lossy.lost == 1 and producer.retries == 1  # retried on a freshly resolved proxy
            assert queue._bucket_refs[target] is not lossy

            # the same stamped group sent again straight to the bucket actor: acknowledged, not stored
            bucket = await queue._ensure_bucket(target)
            before = await _read(system, tmp_path, options)
            await bucket.put_batch([dict(r) for r in before[target][-10:]])
            after = await _read(system, tmp_path, options)
            assert after == before
            _check_once_in_order(after, queue, 200)
        finally:
            await _close(system)

    asyncio.run(go())


def test_bad_input_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    async def go() -> None:
        system, writer = await _open(tmp_path, {"enable_wal": True})
        try:
            producer = Producer(writer, producer_id="p3")
            with pytest.raises(ConfigError, match="records must be a list"):
                await producer.put_many({"id": "a"})  # type: ignore[arg-type]
            with pytest.raises(InvalidRecordError, match="record 2 of put_many is a str") as bad:
                await producer.put_many([{"id": "a"}, {"id": "b"}, "c"])  # type: ignore[list-item]
            assert bad.value.index == 2
            with pytest.raises(InvalidRecordError, match="record 1 of put_many has no bucket column 'id'") as bad:
                await producer.put_many([{"id": "a"}, {"name": "b"}])
            assert bad.value.field == "id"
            with pytest.raises(ConfigError, match="max_batch"):
                await producer.put_many([{"id": "a"}], max_batch=0)
            assert await producer.put_many([]) == []
            assert producer.seq == 0
            rows = await writer.queue.get(limit=100)
            assert rows == []
        finally:
            await _close(system)

    asyncio.run(go())
