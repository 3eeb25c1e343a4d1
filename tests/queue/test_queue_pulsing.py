"""Through Pulsing itself: ``write_queue``/``read_queue`` with the registered backends, an actor
system shut down and a new one started on the same ``storage_path``."""

from __future__ import annotations

import asyncio
import gc
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pul = pytest.importorskip("pulsing")
streaming = pytest.importorskip("pulsing.streaming")

import persisting.queue

NUM_BUCKETS = 4


def record(seq: int) -> dict[str, Any]:
    return {"id": f"user-{seq % 13}", "seq": seq, "payload": f"value {seq}"}


async def shutdown(system: Any) -> None:
    await system.shutdown()
    await asyncio.sleep(0.3)  # let Pulsing's runtime threads finish (else exit can crash)
    gc.collect()  # bucket actors are dropped by now; their backends close and free the buckets


def check_order(rows: list[dict[str, Any]], queue: Any) -> None:
    """Within each bucket, records come back in the order they were written."""
    per_bucket: dict[int, list[int]] = defaultdict(list)
    for r in rows:
        per_bucket[queue.get_bucket_id(r["id"])].append(r["seq"])
    for bucket, got in per_bucket.items():
        assert got == sorted(got), f"bucket {bucket} out of order"


@pytest.mark.parametrize(
    ("backend", "options", "flush"),
    [
        ("lance", {}, True),
        ("persisting", {"enable_wal": True, "compression": "zstd", "enable_metrics": True}, False),
    ],
    ids=["lance", "persisting-wal"],
)
def test_records_survive_an_actor_system_restart(tmp_path: Path, backend: str, options: dict[str, Any], flush: bool) -> None:
    persisting.queue.register()
    storage = str(tmp_path / "queues")

    async def go() -> None:
        system = await pul.actor_system()
        writer = await streaming.write_queue(system, "orders", num_buckets=NUM_BUCKETS, storage_path=storage,
                                             backend=backend, backend_options=options)
        for seq in range(120):
            await writer.put(record(seq))
        if flush:  # LanceBackend keeps records in its buffer until a flush (or its close)
            await writer.flush()
        stats = await writer.queue.stats()
        assert sum(s["total_count"] for s in stats["buckets"].values()) == 120
        assert len(stats["buckets"]) == NUM_BUCKETS
        await shutdown(system)

        system = await pul.actor_system()
        reader = await streaming.read_queue(system, "orders", num_buckets=NUM_BUCKETS, storage_path=storage,
                                            backend=backend, backend_options=options)
        rows = await reader.get(limit=1000)
        assert sorted(r["seq"] for r in rows) == list(range(120))
        assert all(r == record(r["seq"]) for r in rows)
        check_order(rows, reader.queue)

        writer = await streaming.write_queue(system, "orders", num_buckets=NUM_BUCKETS, storage_path=storage,
                                             backend=backend, backend_options=options)
        for seq in range(120, 130):
            await writer.put(record(seq))
        more = await reader.get(limit=1000)  # the reader's offsets continue where they were
        assert sorted(r["seq"] for r in more) == list(range(120, 130))
        await shutdown(system)

    asyncio.run(go())


def test_a_waiting_reader_wakes_through_pulsing(tmp_path: Path) -> None:
    persisting.queue.register()

    async def go() -> None:
        system = await pul.actor_system()
        try:
            writer = await streaming.write_queue(system, "live", num_buckets=2, storage_path=str(tmp_path),
                                                 backend="persisting", backend_options={"enable_wal": True})
            bucket = writer.queue.get_bucket_id("late")
            await writer.put({"id": "late", "seq": 0, "payload": "first"})
            reader = await streaming.read_queue(system, "live", bucket_id=bucket, num_buckets=2,
                                                storage_path=str(tmp_path), backend="persisting",
                                                backend_options={"enable_wal": True})
            assert [r["seq"] for r in await reader.get(limit=10)] == [0]

            async def late() -> None:
                await asyncio.sleep(0.3)
                await writer.put({"id": "late", "seq": 1, "payload": "second"})

            start = time.monotonic()
            task = asyncio.create_task(late())
            rows = await reader.get(limit=1, wait=True, timeout=20)
            await task
            assert [r["seq"] for r in rows] == [1]
            assert time.monotonic() - start < 10
        finally:
            await shutdown(system)

    asyncio.run(go())


def test_a_bad_record_through_pulsing_is_refused_by_name(tmp_path: Path) -> None:
    persisting.queue.register()

    async def go() -> None:
        system = await pul.actor_system()
        try:
            writer = await streaming.write_queue(system, "typed", num_buckets=1, storage_path=str(tmp_path),
                                                 backend="persisting", backend_options={"enable_wal": True})
            await writer.put({"id": "a", "seq": 0, "payload": "text"})
            with pytest.raises(Exception, match="field 'payload' is stored as string"):
                await writer.put({"id": "b", "seq": 1, "payload": 5})
            reader = await streaming.read_queue(system, "typed", num_buckets=1, storage_path=str(tmp_path),
                                                backend="persisting")
            assert [r["seq"] for r in await reader.get(limit=10)] == [0]
        finally:
            await shutdown(system)

    asyncio.run(go())
