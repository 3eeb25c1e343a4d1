"""Queue demo: a Pulsing queue written with the WAL on, the writer SIGKILLed, read back."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from typing import Any

from persisting.demos import table

TOPIC = "orders"
BUCKETS = 2
OPTIONS = {"enable_wal": True, "wal_sync_interval": 0, "compression": "zstd"}

_WRITER = """
import asyncio, sys
import pulsing as pul
from pulsing.streaming import write_queue
import persisting.queue

async def main(storage, n):
    persisting.queue.register()
    system = await pul.actor_system()
    writer = await write_queue(system, "orders", num_buckets=2, storage_path=storage, backend="persisting",
                               backend_options={"enable_wal": True, "wal_sync_interval": 0, "compression": "zstd"})
    for i in range(n):
        await writer.put({"id": f"user-{i % 7}", "seq": i, "amount": round(i * 1.5, 2)})
    print("acknowledged", n, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _read_back(storage: str) -> list[dict[str, Any]]:
    import pulsing as pul
    from pulsing.streaming import read_queue

    import persisting.queue

    persisting.queue.register()
    system = await pul.actor_system()
    try:
        reader = await read_queue(system, TOPIC, num_buckets=BUCKETS, storage_path=storage,
                                  backend="persisting", backend_options=OPTIONS)
        rows: list[dict[str, Any]] = []
        for bucket in range(BUCKETS):
            rows.extend(await reader.queue.get(bucket_id=bucket, limit=1_000_000))
        return rows
    finally:
        await system.shutdown()
        await asyncio.sleep(0.3)
        gc.collect()


def run(root: str) -> None:
    storage = os.path.join(root, "queue")
    os.makedirs(storage, exist_ok=True)
    n = 300
    child = subprocess.Popen([sys.executable, "-c", _WRITER, storage, str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    child.kill()
    child.wait()
    print(f"   a Pulsing node wrote {n} orders to topic '{TOPIC}' (backend 'persisting', WAL fsync per put),")
    print(f"   said '{line}', and was SIGKILLed before any flush; a new actor system reads the queue back:")
    rows = asyncio.run(_read_back(storage))
    seqs = sorted(r["seq"] for r in rows)
    print(table([
        ("records read back", f"{len(rows)} of {n}"),
        ("missing", n - len(set(seqs))),
        ("duplicates", len(seqs) - len(set(seqs))),
        ("first record", rows[0] if rows else None),
    ]))
