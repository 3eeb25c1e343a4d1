"""First sample_steps(256) of a sampler after the store is compacted.

8 x 2^20 steps are written as full fragments, then each round adds 20 small commits, samples,
runs ``compact()`` and times the next sample of the read-only handle: the view re-reads only
the rows after the fragments the compaction left unchanged (before: the whole table).

    python benchmarks/trajectory_compaction.py
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

from persisting.engine import TableOptions
from persisting.trajectory import TrajectoryStore


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="persisting-bench-compaction-")
    path = os.path.join(tmp, "store")
    per = 1 << 20
    rng = np.random.default_rng(0)
    obs, act, rew = rng.standard_normal((per, 4)).astype(np.float32), rng.integers(0, 2, per), rng.standard_normal(per)
    try:
        with TrajectoryStore(path, durability="none", options=TableOptions(flush_rows=2_000_000)) as store:
            for _ in range(8):
                with store.episode() as ep:
                    ep.add_steps({"obs": obs, "action": act, "reward": rew})
                store.flush()
            reader = TrajectoryStore(path, read_only=True)
            reader.sample_steps(256, seed=0)
            took = []
            for _ in range(3):
                for _ in range(20):
                    with store.episode() as ep:
                        ep.add_steps({"obs": obs[:500], "action": act[:500], "reward": rew[:500]})
                    store.flush()
                reader.sample_steps(256, seed=1)
                store.compact()
                t0 = time.perf_counter()
                reader.sample_steps(256, seed=2)
                took.append(time.perf_counter() - t0)
            reader.close()
        print(f"{8 * per:,} steps in full fragments + 20 small commits, compact(), next sample_steps(256): "
              + ", ".join(f"{t * 1e3:.0f} ms" for t in took))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
