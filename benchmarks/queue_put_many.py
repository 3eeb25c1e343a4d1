"""One producer through Pulsing: ``Producer.put`` vs ``Producer.put_many`` in batches of 1/10/100.

    python benchmarks/queue_put_many.py [--records N] [--buckets N] [--repeats N]
    (also run by: python benchmarks/queue_backends.py --object-wal, or --put-many alone)

An actor system in this process, a topic of ``--buckets`` buckets on PersistingBackend with
``dedup=True``, the WAL either local (fsynced per write) or on S3 (moto's server, its own process
on loopback: buckets and WAL on S3, ``wal="object"``). Every put is acknowledged once durable.
``put`` sends one record per message (one WAL append each); ``put_many`` sends one
``put_batch`` per bucket per call (one WAL append per bucket), the buckets concurrently.
Records/s per case, best of ``--repeats`` on a fresh topic, and the ratio to ``put`` with the
same WAL.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any

import pulsing as pul

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from queue_object_wal import start_moto  # noqa: E402

import persisting.queue  # noqa: E402
from persisting.queue import Producer  # noqa: E402

BATCHES = (1, 10, 100)


def record(i: int) -> dict[str, Any]:
    return {"id": f"user-{i % 997}", "n": i, "text": f"event {i} payload " + "x" * 64}


async def run_case(options: dict[str, Any], batch: int | None, records: int, buckets: int, root: str, topic: str) -> float:
    """Records/s of one producer putting ``records`` records (``batch=None``: ``put``)."""
    system = await pul.actor_system()
    try:
        writer = await persisting.queue.write_queue(system, topic, num_buckets=buckets, storage_path=root,
                                                    backend="persisting", backend_options=options)
        producer = Producer(writer, producer_id="bench")
        await producer.put_many([record(-b) for b in range(4 * buckets)])  # bucket actors exist before timing
        rows = [record(i) for i in range(records)]
        start = time.perf_counter()
        if batch is None:
            for r in rows:
                await producer.put(r)
        else:
            for k in range(0, records, batch):
                await producer.put_many(rows[k : k + batch])
        took = time.perf_counter() - start
        return records / took
    finally:
        await system.shutdown()
        await asyncio.sleep(0.3)
        gc.collect()


async def table(name: str, options: dict[str, Any], args: argparse.Namespace, root: str) -> None:
    cases: list[tuple[str, int | None]] = [("put", None)] + [(f"put_many({b})", b) for b in BATCHES]
    rates = {}
    for label, batch in cases:
        best = 0.0
        for r in range(args.repeats):
            topic = f"{name.split()[0].lower()}_{label.replace('(', '').replace(')', '')}_{r}"
            best = max(best, await run_case(options, batch, args.records, args.buckets, os.path.join(root, topic), topic))
        rates[label] = best
    base = rates["put"]
    print(f"\n## {name}: {args.records} records, {args.buckets} buckets, one producer, best of {args.repeats}")
    print(f"{'call':16} {'records/s':>10} {'vs put':>8}")
    for label, rate in rates.items():
        print(f"{label:16} {rate:10,.0f} {rate / base:7.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=400, help="records per case (default 400)")
    parser.add_argument("--buckets", type=int, default=4, help="buckets of the topic (default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case, best kept (default 1)")
    args = parser.parse_args(argv)
    persisting.queue.register()
    print(f"# {platform.node()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}; Producer.put vs put_many")
    moto, opts = start_moto()
    root = tempfile.mkdtemp(prefix="bench-putmany-")
    try:
        local = {"enable_wal": True, "wal_sync_interval": 0, "dedup": True}
        remote = {"uri": "s3://bench-wal/putmany", "storage_options": opts, "wal": "object", "dedup": True}
        asyncio.run(table("local WAL, fsync per write", local, args, root))
        asyncio.run(table("WAL on S3 (moto), wal='object'", remote, args, root))
        print(f"\n# load after: {os.getloadavg()[0]:.2f}")
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
