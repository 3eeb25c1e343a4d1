"""Many writers on one table: aggregate append rate with 1, 2 and 4 writer processes.

Each writer is a fresh interpreter (``subprocess``; Lance is not fork-safe) that imports
everything, opens the same Table (durability ``batch``, its own WAL under the table's WAL
directory), then waits for "go" on stdin so imports and opens are not timed. It appends
``--rows`` rows in Arrow batches of ``--batch-rows`` and closes (final flush: every row
committed to Lance and fsynced). The time is from "go" to the last writer's exit; afterwards the
table is counted: rows lost or duplicated are reported (and must be 0).

Anchor in the same run: one writer (the 1-writer row) -- the issue's target is 2 writers >= 1.6x
one writer's rate on this 2-core machine.

    python benchmarks/many_writers.py [--rows 1000000] [--batch-rows 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("LANCE_LOG", "error")


def child(uri: str, rows: int, batch_rows: int, start: int, flush_rows: int) -> None:
    import numpy as np
    import pyarrow as pa

    from persisting.engine import Table, TableOptions

    batches = []
    for lo in range(start, start + rows, batch_rows):
        n = min(batch_rows, start + rows - lo)
        ids = np.arange(lo, lo + n, dtype=np.int64)
        batches.append(pa.record_batch({"id": ids, "ts": ids.astype(np.float64) * 0.5,
                                        "payload": pa.array([f"row-{i:058d}" for i in range(lo, lo + n)])}))
    table = Table(uri, options=TableOptions(durability="batch", flush_rows=flush_rows, compact_fragments=0))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    for b in batches:
        table.append(b)
    table.close()


def run(uri: str, writers: int, rows: int, batch_rows: int, flush_rows: int) -> float:
    procs = [
        subprocess.Popen([sys.executable, __file__, "--_child", uri, str(rows), str(batch_rows), str(k * rows),
                          str(flush_rows)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for k in range(writers)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"writer exited with {p.returncode}")
    return time.perf_counter() - t0


def check(uri: str, expected: int) -> tuple[int, int]:
    import lance

    ids = lance.dataset(uri).to_table(columns=["id"]).column("id").to_numpy()
    unique = len(set(ids.tolist()))
    return expected - unique, len(ids) - unique  # lost, duplicated


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows appended by each writer")
    p.add_argument("--batch-rows", type=int, default=10_000)
    p.add_argument("--flush-rows", type=int, default=100_000)
    p.add_argument("--writers", default="1,2,4")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tmp", default="/tmp")
    p.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._child:
        uri, rows, batch_rows, start, flush_rows = args._child
        child(uri, int(rows), int(batch_rows), int(start), int(flush_rows))
        return 0
    root = tempfile.mkdtemp(prefix="persisting-many-", dir=args.tmp)
    try:
        results: dict[int, list[float]] = {}
        for n in [int(x) for x in args.writers.split(",")]:
            results[n] = []
            for r in range(args.repeat):
                uri = os.path.join(root, f"w{n}-{r}.lance")
                secs = run(uri, n, args.rows, args.batch_rows, args.flush_rows)
                lost, dup = check(uri, n * args.rows)
                if lost or dup:
                    raise SystemExit(f"{n} writers: {lost} rows lost, {dup} duplicated")
                results[n].append(n * args.rows / secs)
                shutil.rmtree(uri)
                shutil.rmtree(uri.removesuffix(".lance") + ".wal", ignore_errors=True)
        base = statistics.median(results[min(results)])
        print(f"{'writers':>8} {'best rows/s':>14} {'median rows/s':>14} {'x one writer':>13}  lost/dup")
        for n, rates in results.items():
            med = statistics.median(rates)
            print(f"{n:>8} {max(rates):>14,.0f} {med:>14,.0f} {med / base:>12.2f}x  0/0")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
