"""Child process for the queue crash and cluster tests: a Pulsing node using the backends.

Always a fresh interpreter started with ``subprocess`` (Lance is not fork-safe). Usage::

    python pulsing_queue_child.py write STORAGE TOPIC BUCKETS FIRST_SEQ
    python pulsing_queue_child.py read  STORAGE TOPIC BUCKETS
    python pulsing_queue_child.py node  STORAGE TOPIC BUCKETS ADDR SEED

``write`` puts records through ``write_queue(backend="persisting")`` with the WAL fsynced on
every write, forever (the parent SIGKILLs it), printing ``T <seq>`` before each ``put`` and
``A <seq>`` once it is acknowledged. ``read`` prints one JSON line: every record, read through
``read_queue``. ``node`` joins the cluster at SEED, prints ``READY`` once it sees two members,
then on the stdin line ``READ`` prints a JSON line with every record read from this node and
the buckets this node owns, and exits on ``EXIT``.

Every record is ``record(seq)``, so a reader can tell a garbled record from a good one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pulsing as pul
from pulsing.streaming import get_storage_manager, read_queue, write_queue

import persisting.queue

WAL_OPTIONS = {"enable_wal": True, "wal_sync_interval": 0, "flush_threshold": 40, "max_wal_size": 8192}


def record(seq: int) -> dict[str, Any]:
    return {"id": f"user-{seq % 11}", "seq": seq, "payload": f"payload-{seq}-" + "z" * (seq % 17)}


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def shutdown(system: Any) -> None:
    await system.shutdown()
    await asyncio.sleep(0.3)


async def write(storage: str, topic: str, buckets: int, first: int) -> None:
    system = await pul.actor_system()
    writer = await write_queue(system, topic, num_buckets=buckets, storage_path=storage,
                               backend="persisting", backend_options=WAL_OPTIONS)
    say("READY")
    seq = first
    while True:
        say(f"T {seq}")
        await writer.put(record(seq))
        say(f"A {seq}")
        seq += 1


async def read_all(system: Any, storage: str, topic: str, buckets: int) -> list[dict[str, Any]]:
    reader = await read_queue(system, topic, num_buckets=buckets, storage_path=storage,
                              backend="persisting", backend_options=WAL_OPTIONS)
    rows: list[dict[str, Any]] = []
    for bucket in range(buckets):
        got = await reader.queue.get(bucket_id=bucket, limit=1_000_000)
        rows.extend({"bucket": bucket, **r} for r in got)
    return rows


async def read(storage: str, topic: str, buckets: int) -> None:
    system = await pul.actor_system()
    rows = await read_all(system, storage, topic, buckets)
    say(json.dumps(rows))
    await shutdown(system)


async def node(storage: str, topic: str, buckets: int, addr: str, seed: str) -> None:
    system = await pul.actor_system(addr=addr, seeds=[seed])
    manager = await get_storage_manager(system)
    for _ in range(200):
        members = await system.members()
        if sum((m.get("status") or m.get("state")) == "Alive" for m in members) >= 2:
            break
        await asyncio.sleep(0.1)
    say("READY")
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "READ":
            rows = await read_all(system, storage, topic, buckets)
            owned = sorted(b["bucket_id"] for b in await manager.list_buckets() if b["topic"] == topic)
            say(json.dumps({"rows": rows, "owned": owned}))
        elif line in ("EXIT", ""):
            break
    await shutdown(system)


def main() -> None:
    persisting.queue.register()
    action, storage, topic, buckets = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if action == "write":
        asyncio.run(write(storage, topic, buckets, int(sys.argv[5])))
    elif action == "read":
        asyncio.run(read(storage, topic, buckets))
    elif action == "node":
        asyncio.run(node(storage, topic, buckets, sys.argv[5], sys.argv[6]))
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
