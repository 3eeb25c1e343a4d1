"""KV cache puts at capacity (the steady state of an inference server: every put evicts) against
the same puts into a store of the same size with no capacity bound, in the same run.

A store holding ``--chunks`` chunks (filled with long prompts, 64 chunks per put) takes
``--puts`` one-chunk prompts; each put at capacity evicts the least recently used chunk, a
delete in place. Prints p50 per put for both stores and the ratio.

    python benchmarks/kvcache_capacity.py --chunks 2000,20000
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # benchmarks/queue.py would shadow the stdlib queue

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np

from persisting.kvcache import KVCacheStore

CHUNK = 16
SHAPE = (2, 2, 4, 8)  # (k/v, layers, heads, head_dim) around the token axis


def kv(tokens: int) -> np.ndarray:
    return np.zeros((*SHAPE[:3], tokens, SHAPE[3]), np.float16)


def put_p50_ms(path: str, chunks: int, puts: int, capacity: bool) -> float:
    per_chunk = kv(CHUNK).nbytes
    store = KVCacheStore(path, namespace="bench", chunk_size=CHUNK,
                         capacity_bytes=chunks * per_chunk if capacity else None)
    try:
        big = kv(64 * CHUNK)
        for k in range(chunks // 64 + (1 if capacity else 0)):
            store.put(np.arange(k * 10**6, k * 10**6 + 64 * CHUNK), big)
        times = []
        for k in range(puts):
            toks = np.arange(10**9 + k * 10**6, 10**9 + k * 10**6 + CHUNK)
            t0 = time.perf_counter()
            store.put(toks, kv(CHUNK))
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="2000,20000", help="store sizes in chunks, comma-separated")
    parser.add_argument("--puts", type=int, default=40)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="persisting-bench-kvcap-")
    try:
        print(f"one-chunk puts ({CHUNK} tokens, {kv(CHUNK).nbytes} bytes), p50 of {args.puts}")
        for n in (int(x) for x in args.chunks.split(",")):
            at_cap = put_p50_ms(os.path.join(tmp, f"cap-{n}"), n, args.puts, capacity=True)
            free = put_p50_ms(os.path.join(tmp, f"free-{n}"), n, args.puts, capacity=False)
            print(f"  {n:>7,} chunks: at capacity {at_cap:7.1f} ms   no bound {free:7.1f} ms   ratio {at_cap / free:5.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
