"""Child for the power-cut tests: write through one store forever, report what is acknowledged.

    python child.py CASE ROOT SEED

Prints ``GO`` once the store is open, then ``A <id>`` after the call that acknowledges record
``<id>`` durable has returned, and ``D <n>`` once every record with id < n is durable (after an
explicit ``sync()``/``flush()``). The parent SIGKILLs us at a random moment; ids are
consecutive from 0, and :func:`expected` says what record ``id`` holds.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from typing import Any

import numpy as np


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def expected(i: int) -> dict[str, Any]:
    """The scalar record ``i`` (its other fields are functions of ``i``)."""
    return {"seq": i, "payload": f"p{i}", "val": i * 0.5, "pad": "x" * (i % 23)}


def kv_tensor(i: int) -> np.ndarray:
    return np.full((2, 1, 8, 4), i, dtype=np.float32) + np.arange(4, dtype=np.float32)


def kv_tokens(i: int) -> list[int]:
    return [1000 + i] * 8


def param_state(i: int) -> dict[str, Any]:
    return {"w": np.full((64,), i, dtype=np.float32), "b": np.arange(i % 7 + 1, dtype=np.int64), "step": i}


def table_case(root: str, mode: str, rng: random.Random) -> None:
    from persisting.engine import Table, TableOptions

    opts = TableOptions(durability=mode, wal_sync_interval=0.05 if mode == "batch" else (0 if mode == "always" else 1.0),
                        flush_rows=rng.choice([7, 50, 10_000]))
    t = Table(os.path.join(root, "t.lance"), options=opts)
    say("GO")
    i = 0
    while True:
        n = rng.randint(1, 4)
        t.append([expected(j) for j in range(i, i + n)])
        i += n
        if mode == "always":
            say(f"A {i - n} {i}")
        r = rng.random()
        if r < (0.03 if mode == "always" else 0.15):
            t.flush()
            say(f"D {i}")
        elif r < 0.3 and mode == "batch":
            t.sync()
            say(f"D {i}")


def kv_case(root: str, rng: random.Random) -> None:
    from persisting import KVCacheStore

    s = KVCacheStore(os.path.join(root, "kv"), namespace="m", chunk_size=8)
    say("GO")
    for i in range(10**9):
        s.put(kv_tokens(i), kv_tensor(i))
        say(f"A {i} {i + 1}")


def params_case(root: str, rng: random.Random) -> None:
    from persisting import ParamStore

    s = ParamStore(os.path.join(root, "ck"))
    say("GO")
    for i in range(10**9):
        s.save(param_state(i), step=i)
        say(f"A {i} {i + 1}")


def traj_case(root: str, rng: random.Random) -> None:
    from persisting import TrajectoryStore

    s = TrajectoryStore(os.path.join(root, "rl"), durability="batch", step_buffer=4)
    say("GO")
    for i in range(10**9):
        ep = s.begin_episode(tag=f"e{i}")
        for k in range(i % 5 + 1):
            ep.add_step(obs=float(i), reward=float(k), action=k)
        ep.end()
        s.sync()
        say(f"A {i} {i + 1}")


def queue_case(root: str, kind: str, rng: random.Random) -> None:
    from persisting.queue import LanceBackend, PersistingBackend

    async def run() -> None:
        path = os.path.join(root, "q")
        if kind == "lance":
            b: Any = LanceBackend(bucket_id=0, storage_path=path, batch_size=5)
        else:
            b = PersistingBackend(bucket_id=0, storage_path=path, batch_size=5, enable_wal=True, wal_sync_interval=0)
        say("GO")
        for i in range(10**9):
            await b.put(expected(i))
            if kind == "lance":
                if rng.random() < 0.3:
                    await b.flush()
                    say(f"D {i + 1}")
            else:
                say(f"A {i} {i + 1}")

    asyncio.run(run())


def order_case(root: str) -> None:
    """Two appends (``always``) and two commits, each step marked for the fsync-order test.

    ``MARK <what> <n>``: ``n`` is how many fsyncs the shim had logged when ``<what>`` returned
    (-1 without the shim; under strace the mark's own write to stdout places it).
    """
    from persisting.engine import Table, TableOptions

    log = os.path.join(os.environ.get("PCUT_SHADOW", "/nonexistent"), "events.log")

    def mark(what: str) -> None:
        try:
            with open(log) as f:
                n = sum(1 for _ in f)
        except FileNotFoundError:
            n = -1 if "PCUT_SHADOW" not in os.environ else 0
        say(f"MARK {what} {n}")

    t = Table(os.path.join(root, "t.lance"), options=TableOptions(durability="always", background_flush=False))
    mark("open")
    for i in range(2):
        t.append([expected(i)])
        mark(f"ack{i}")
        t.flush()
        mark(f"commit{i}")
    t.close()
    mark("closed")


def main() -> None:
    case, root, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    if case.startswith("table-"):
        table_case(root, case.removeprefix("table-"), rng)
    elif case == "kv":
        kv_case(root, rng)
    elif case == "params":
        params_case(root, rng)
    elif case == "traj":
        traj_case(root, rng)
    elif case == "order":
        order_case(root)
    elif case.startswith("queue-"):
        queue_case(root, case.removeprefix("queue-"), rng)
    else:
        raise SystemExit(f"unknown case {case}")


if __name__ == "__main__":
    main()
