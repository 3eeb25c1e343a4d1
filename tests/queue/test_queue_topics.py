"""Topics sharing one ``storage_path`` stay apart; backends by class; snappy refused.

Through real Pulsing actor systems, as a user of the seed examples would run them: every
example passes one ``storage_path`` for all its topics.
"""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import pytest

pul = pytest.importorskip("pulsing")
streaming = pytest.importorskip("pulsing.streaming")

import persisting.queue
from persisting.errors import ConfigError, TopicMismatchError
from persisting.queue import PersistingBackend, read_queue, write_queue


async def shutdown(system: Any) -> None:
    await system.shutdown()
    await asyncio.sleep(0.3)  # let Pulsing's runtime threads finish
    gc.collect()  # bucket actors are dropped: their backends close and free the buckets


def test_two_live_topics_under_one_storage_path_stay_apart(tmp_path: Path) -> None:
    root = str(tmp_path / "queues")
    opts = {"enable_wal": True}

    async def go() -> None:
        system = await pul.actor_system()
        try:
            pay = await write_queue(system, "payments", num_buckets=2, storage_path=root, backend="persisting",
                                    backend_options=opts)
            feed = await write_queue(system, "public-feed", num_buckets=2, storage_path=root, backend="persisting",
                                     backend_options=opts)
            for i in range(20):  # both topics live at once, interleaved
                await pay.put({"id": f"u{i}", "topic": "payments", "seq": i})
                await feed.put({"id": f"u{i}", "topic": "public-feed", "seq": i})
            await pay.flush()
            await feed.flush()
            stats = await feed.queue.stats()
            assert {b["topic"] for b in stats["buckets"].values()} == {"public-feed"}
        finally:
            await shutdown(system)

        system = await pul.actor_system()
        try:
            reader = await read_queue(system, "public-feed", num_buckets=2, storage_path=root, backend="persisting",
                                      backend_options=opts)
            rows = await reader.get(limit=1000)
            assert {r["topic"] for r in rows} == {"public-feed"}
            assert sorted(r["seq"] for r in rows) == list(range(20))
        finally:
            await shutdown(system)

    asyncio.run(go())
    assert sorted(os.listdir(root)) == ["payments", "public-feed"]
    with open(os.path.join(root, "payments", "bucket_0", "bucket_0.wal", "TOPIC")) as f:
        assert f.read().strip() == "payments"


def test_a_backend_told_its_topic_refuses_another_topics_bucket(tmp_path: Path) -> None:
    b = PersistingBackend(bucket_id=0, storage_path=str(tmp_path), topic="payments", enable_wal=True)
    asyncio.run(b.put({"id": "a", "amount": 5}))
    with pytest.raises(TopicMismatchError, match="holds topic 'payments', not 'public-feed'") as info:
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), topic="public-feed")
    assert isinstance(info.value, ConfigError) and info.value.details["stored_topic"] == "payments"
    b.close()
    with pytest.raises(TopicMismatchError):  # closed, still refused: the record is on disk
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), topic="public-feed")
    again = PersistingBackend(bucket_id=0, storage_path=str(tmp_path), topic="payments")
    assert asyncio.run(again.get(10, 0)) == [{"id": "a", "amount": 5}]
    again.close()


def test_raw_pulsing_with_a_shared_storage_path_is_refused_by_topic(tmp_path: Path) -> None:
    """Plain ``pulsing.streaming.write_queue`` with the topic option: the second topic's bucket
    is refused instead of serving the first topic's records."""
    persisting.queue.register()

    async def go() -> None:
        system = await pul.actor_system()
        try:
            a = await streaming.write_queue(system, "payments", num_buckets=1, storage_path=str(tmp_path),
                                            backend="persisting", backend_options={"topic": "payments"})
            await a.put({"id": "x", "n": 1})
            await a.flush()
            b = await streaming.write_queue(system, "public-feed", num_buckets=1, storage_path=str(tmp_path),
                                            backend="persisting", backend_options={"topic": "public-feed"})
            with pytest.raises(Exception):  # Pulsing reports the failed actor start its own way
                await b.put({"id": "y", "n": 2})
        finally:
            await shutdown(system)

    asyncio.run(go())
    with pytest.raises(TopicMismatchError):  # the cause, as the bucket actor saw it
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path / "bucket_0"), topic="public-feed")


@pytest.mark.parametrize("helper", ["persisting", "pulsing"])
def test_backend_by_class(tmp_path: Path, helper: str) -> None:
    persisting.queue.register()
    write = write_queue if helper == "persisting" else streaming.write_queue
    read = read_queue if helper == "persisting" else streaming.read_queue

    async def go() -> None:
        system = await pul.actor_system()
        try:
            writer = await write(system, "orders", num_buckets=2, storage_path=str(tmp_path),
                                 backend=PersistingBackend, backend_options={"enable_wal": True})
            for i in range(10):
                await writer.put({"id": f"k{i}", "seq": i})
            reader = await read(system, "orders", num_buckets=2, storage_path=str(tmp_path),
                                backend=PersistingBackend, backend_options={"enable_wal": True})
            assert sorted(r["seq"] for r in await reader.get(limit=100)) == list(range(10))
        finally:
            await shutdown(system)

    asyncio.run(go())


def test_snappy_is_refused_not_stored_as_lz4(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no snappy column encoding"):
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), compression="snappy")
    assert not os.listdir(tmp_path)


def test_topic_names_that_escape_the_directory_are_refused(tmp_path: Path) -> None:
    from persisting.errors import InvalidNameError

    with pytest.raises(InvalidNameError):
        asyncio.run(write_queue(None, "../x", storage_path=str(tmp_path), backend="persisting"))
