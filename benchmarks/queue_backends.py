"""Queue backends: Pulsing's MemoryBackend vs LanceBackend vs PersistingBackend, same records.

    python benchmarks/queue_backends.py [--single N] [--batches N] [--repeats N]

Through Pulsing (an actor system in this process, 4 buckets): ``writer.put`` of single records,
and ``put_batch`` of 1,000 records on one bucket actor (Pulsing's writer has no public
put_batch; ``pulsing.streaming.get_bucket_ref`` gives the bucket). Then the backends called
directly: ``put`` and ``put_batch(1,000)``. Every timed run ends with ``flush()``, so the Lance
backends have committed what they were given. Each cell is the best of ``--repeats`` runs on a
fresh directory. Targets (issue 3): through Pulsing, PersistingBackend with WAL (1 s) >= 0.8x
MemoryBackend for single puts; called directly, put_batch with WAL (1 s) >= 500,000 records/s.

``--object-wal`` runs benchmarks/queue_object_wal.py instead: the WAL on S3 (moto) at
group-commit windows 0/5/10/50 ms against the local WAL, and node-death recovery time; then
benchmarks/queue_put_many.py: one producer's ``put`` vs ``put_many`` in batches of 1/10/100,
local WAL and WAL on S3 (``--put-many`` runs only that, taking its own options).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pulsing as pul
from pulsing.streaming import MemoryBackend, get_bucket_ref, register_backend, write_queue

import persisting.queue
from persisting.queue import LanceBackend, PersistingBackend

BACKENDS: list[tuple[str, str, dict[str, Any]]] = [
    ("MemoryBackend", "memory", {}),
    ("LanceBackend", "lance", {}),
    ("PersistingBackend WAL 1 s", "persisting", {"enable_wal": True, "wal_sync_interval": 1.0}),
    ("PersistingBackend WAL 0 (fsync each write)", "persisting", {"enable_wal": True, "wal_sync_interval": 0}),
]
CLASSES: dict[str, Callable[..., Any]] = {"memory": MemoryBackend, "lance": LanceBackend, "persisting": PersistingBackend}


def record(i: int) -> dict[str, Any]:
    return {"id": f"user-{i % 997}", "seq": i, "score": i * 0.5, "text": f"event {i} payload " + "x" * 64}


async def _shutdown(system: Any) -> None:
    await system.shutdown()
    await asyncio.sleep(0.3)  # let Pulsing's runtime threads finish before the next system or exit


async def through_pulsing(backend: str, options: dict[str, Any], n_single: int, n_batches: int, root: str) -> tuple[float, float]:
    system = await pul.actor_system()
    try:
        writer = await write_queue(system, "bench", num_buckets=4, storage_path=os.path.join(root, "single"),
                                   backend=backend, backend_options=options)
        for i in range(-40, 0):  # create the bucket actors outside the timing
            await writer.put(record(i))
        start = time.perf_counter()
        for i in range(n_single):
            await writer.put(record(i))
        await writer.flush()
        single = n_single / (time.perf_counter() - start)

        bucket = await get_bucket_ref(system, "bench_batch", 0, storage_path=os.path.join(root, "batch"),
                                      backend=backend, backend_options=options)
        batches = [[record(b * 1000 + i) for i in range(1000)] for b in range(n_batches)]
        await bucket.put(record(-1))
        start = time.perf_counter()
        for batch in batches:
            await bucket.put_batch(batch)
        await bucket.flush()
        batched = n_batches * 1000 / (time.perf_counter() - start)
        return single, batched
    finally:
        await _shutdown(system)


async def direct(backend: str, options: dict[str, Any], n_single: int, n_batches: int, root: str) -> tuple[float, float]:
    cls = CLASSES[backend]
    b = cls(bucket_id=0, storage_path=os.path.join(root, "direct_single"), batch_size=100, **options)
    records = [record(i) for i in range(n_single)]
    start = time.perf_counter()
    for r in records:
        await b.put(r)
    await b.flush()
    single = n_single / (time.perf_counter() - start)
    if hasattr(b, "close"):
        b.close()
    b = cls(bucket_id=0, storage_path=os.path.join(root, "direct_batch"), batch_size=100, **options)
    batches = [[record(k * 1000 + i) for i in range(1000)] for k in range(n_batches)]
    start = time.perf_counter()
    for batch in batches:
        await b.put_batch(batch)
    await b.flush()
    batched = n_batches * 1000 / (time.perf_counter() - start)
    if hasattr(b, "close"):
        b.close()
    return single, batched


async def best_of(fn: Callable[..., Any], repeats: int, *args: Any) -> tuple[float, float]:
    best = (0.0, 0.0)
    for _ in range(repeats):
        root = tempfile.mkdtemp(prefix="persisting-bench-queue-")
        try:
            got = await fn(*args, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        best = (max(best[0], got[0]), max(best[1], got[1]))
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--object-wal", action="store_true",
                        help="instead: the WAL on S3 (moto) vs the local WAL, and node-death recovery (queue_object_wal.py), "
                        "then put vs put_many (queue_put_many.py)")
    parser.add_argument("--put-many", action="store_true",
                        help="instead: one producer's put vs put_many(1/10/100), local WAL and on S3 (queue_put_many.py)")
    parser.add_argument("--single", type=int, default=2000, help="single puts per run through Pulsing, 3x that direct (default 2000)")
    parser.add_argument("--batches", type=int, default=40, help="put_batch calls of 1,000 records per run (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell, best kept (default 3)")
    args = parser.parse_args()
    persisting.queue.register()
    register_backend("memory", MemoryBackend)

    rows = []
    for label, name, options in BACKENDS:
        via = await best_of(through_pulsing, args.repeats, name, options, args.single, args.batches)
        dir_ = await best_of(direct, args.repeats, name, options, args.single * 3, args.batches)
        rows.append((label, via, dir_))

    mem_via, mem_dir = rows[0][1], rows[0][2]
    print(f"# Queue backends ({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"pulsing {pul.__version__ if hasattr(pul, '__version__') else '0.1.2'})")
    print(f"single puts/run: {args.single} through Pulsing, {args.single * 3} direct; "
          f"put_batch: {args.batches} x 1,000; best of {args.repeats}; records/s (ratio vs MemoryBackend)\n")
    print("| backend | Pulsing put | Pulsing bucket put_batch(1000) | direct put | direct put_batch(1000) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, via, dir_ in rows:
        cells = [
            f"{via[0]:,.0f} ({via[0] / mem_via[0]:.2f}x)",
            f"{via[1]:,.0f} ({via[1] / mem_via[1]:.2f}x)",
            f"{dir_[0]:,.0f} ({dir_[0] / mem_dir[0]:.2f}x)",
            f"{dir_[1]:,.0f} ({dir_[1] / mem_dir[1]:.2f}x)",
        ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    wal1 = rows[2]
    ratio = wal1[1][0] / mem_via[0]
    print(f"\ntarget: Pulsing put, PersistingBackend WAL 1 s >= 0.80x MemoryBackend: {ratio:.2f}x "
          f"-> {'met' if ratio >= 0.8 else 'NOT met'}")
    print(f"target: direct put_batch, PersistingBackend WAL 1 s >= 500,000 records/s: {wal1[2][1]:,.0f} "
          f"-> {'met' if wal1[2][1] >= 500_000 else 'NOT met'}")


if __name__ == "__main__":
    if "--put-many" in sys.argv[1:]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from queue_put_many import main as put_many_main

        put_many_main([a for a in sys.argv[1:] if a != "--put-many"])
    elif "--object-wal" in sys.argv[1:]:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from queue_object_wal import main as object_wal_main
        from queue_put_many import main as put_many_main

        object_wal_main([a for a in sys.argv[1:] if a != "--object-wal"])
        put_many_main([])
    else:
        asyncio.run(main())
