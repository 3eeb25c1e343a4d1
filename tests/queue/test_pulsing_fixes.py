"""persisting.queue.pulsing_fixes: a bucket whose actor is gone is created again.

Pulsing 0.1.2's StorageManager keeps returning its cached reference to a bucket actor that no
longer exists, so every later put fails until the process restarts (in a cluster: a survivor
that cached a dead node's bucket during failure detection). Here the bucket actor is stopped
for real in a one-node system; before the fix the next put raised named_actor_not_found."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pul = pytest.importorskip("pulsing")
streaming = pytest.importorskip("pulsing.streaming")

import persisting.queue
from persisting.queue.pulsing_fixes import install


def test_a_stopped_bucket_actor_is_created_again_and_keeps_its_records(tmp_path: Path) -> None:
    persisting.queue.register()
    assert install(streaming)  # installed by register(), idempotent

    async def go() -> list[int]:
        system = await pul.actor_system()
        try:
            writer = await persisting.queue.write_queue(system, "t", num_buckets=1, storage_path=str(tmp_path),
                                                        backend="persisting")
            await writer.put({"id": "a", "n": 1})
            await writer.flush()
            stopped = system._inner.stop("bucket_t_0")  # the bucket's actor is gone
            if asyncio.iscoroutine(stopped):
                await stopped
            writer.queue._bucket_refs.clear()  # as Producer does after a failed put
            await writer.put({"id": "a", "n": 2})  # before the fix: named_actor_not_found, forever
            await writer.flush()
            reader = await persisting.queue.read_queue(system, "t", num_buckets=1, storage_path=str(tmp_path),
                                                       backend="persisting")
            got = await reader.queue.get(bucket_id=0, limit=100)
            return [r["n"] for r in got]
        finally:
            await system.shutdown()

    assert asyncio.run(go()) == [1, 2]
