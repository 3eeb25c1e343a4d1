"""Queue type widening off the writer's path: the slowest ``put`` around an int -> float widening.

A PersistingBackend bucket is filled with N records whose field ``n`` is an int and committed;
a fresh backend then puts 30,000 records with ``n`` a float (the first one widens the field).
Prints the total time of those puts, the slowest single put (the widening one, when the stored
column used to be rewritten with the writer waiting) and the final flush.

    python benchmarks/queue_widening.py 2000000 nowal    # or: wal
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from persisting.queue import PersistingBackend


async def main(n: int, wal: bool) -> None:
    d = tempfile.mkdtemp()
    b = PersistingBackend(bucket_id=0, storage_path=d, enable_wal=wal, flush_threshold=n)
    await b.put_batch([{"id": f"k{i}", "n": i} for i in range(n)])
    await b.flush()
    b.close()
    b = PersistingBackend(bucket_id=0, storage_path=d, enable_wal=wal)  # default thresholds
    worst = 0.0
    t1 = time.perf_counter()
    for i in range(30_000):
        s = time.perf_counter()
        await b.put({"id": "z", "n": i + 0.5})
        worst = max(worst, time.perf_counter() - s)
    t2 = time.perf_counter()
    await b.flush()
    t3 = time.perf_counter()
    print(f"wal={wal} 30000 puts after widening {t2 - t1:.3f}s worst put {worst:.4f}s; flush {t3 - t2:.3f}s")
    b.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "wal"))
