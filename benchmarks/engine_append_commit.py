"""Engine micro-costs behind the trajectory logging numbers: ``Table.append`` of 256-row batches
in the two layouts a logged episode alternates (steps without and with ``final_obs``), and a
10,000-row commit's own CPU including the digests of its new data files.

    python benchmarks/engine_append_commit.py
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)  # benchmarks/queue.py would shadow the stdlib queue

import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa

from persisting.engine import TableOptions
from persisting.engine import integrity
from persisting.engine.table import Table


def steps(n: int, final: bool) -> pa.RecordBatch:
    rng = np.random.default_rng(n)
    cols = {"episode_id": np.zeros(n, np.int64), "step": np.arange(n, dtype=np.int64),
            "obs": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(3 * n, np.float32)), 3),
            "reward": rng.random(n), "terminated": np.zeros(n, np.bool_)}
    if final:
        cols["final_obs"] = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(3 * n, np.float32)), 3)
    return pa.RecordBatch.from_pydict(cols)


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="persisting-bench-append-")
    try:
        t = Table(os.path.join(tmp, "steps.lance"), options=TableOptions(flush_rows=10**9))
        batches = [steps(256, False), steps(244, True)]
        for b in batches * 50:
            t.append(b)
        n = 2000
        t0 = time.perf_counter()
        for i in range(n):
            t.append(batches[i % 2])
        append_us = (time.perf_counter() - t0) / n * 1e6
        t.close()

        c = Table(os.path.join(tmp, "commit.lance"), options=TableOptions(flush_rows=10**9, background_flush=False))
        big = [steps(10_000, False)]
        cpu, digests = [], []
        real = integrity.digest_file

        def timed_digest(path: str) -> integrity.Digest:
            d0 = time.thread_time()
            try:
                return real(path)
            finally:
                digests.append(time.thread_time() - d0)

        integrity.digest_file = timed_digest  # type: ignore[assignment]
        for _ in range(20):
            for b in big:
                c.append(b)
            c0 = time.thread_time()
            c.flush()
            cpu.append(time.thread_time() - c0)
        integrity.digest_file = real  # type: ignore[assignment]
        c.close()
        print(f"Table.append, 256-row steps batches alternating two layouts: {append_us:.1f} us per append")
        print(f"10,000-row commit: {np.median(cpu) * 1e3:.2f} ms of the committing thread's CPU (median of 20); "
              f"digest_file {np.median(digests) * 1e3:.3f} ms per new file")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
