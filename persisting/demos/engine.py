"""Engine demo: write through the WAL, SIGKILL a writer mid-stream, show the recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from persisting.demos import table
from persisting.engine import Table, TableOptions

_CHILD = """
import sys
from persisting.engine import Table, TableOptions
t = Table(sys.argv[1], options=TableOptions(durability="always", flush_rows=1_000_000))
for i in range(int(sys.argv[2])):
    t.append([{"seq": 100_000 + i, "kind": "after-restart", "value": float(i)}])
print("acknowledged", t.last_lsn, flush=True)
sys.stdin.read()  # wait here until the parent kills us: no flush, no close
"""


def run(root: str) -> None:
    uri = os.path.join(root, "engine", "events.lance")
    os.makedirs(os.path.dirname(uri), exist_ok=True)
    start = time.perf_counter()
    with Table(uri, options=TableOptions(durability="batch", flush_rows=20_000)) as t:
        for b in range(100):
            t.append([{"seq": b * 1000 + i, "kind": "stream", "value": float(i)} for i in range(1000)])
    took = time.perf_counter() - start
    print(f"   appended 100,000 records in 100 batches ({100_000 / took:,.0f} records/s, group-commit WAL)")
    n = 500
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, uri, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    child.kill()
    child.wait()
    print(f"   a second process appended {n} records one by one (fsync each), said '{line}', and was SIGKILLed")
    with Table(uri) as t:
        recovered = t.count(filter="kind = 'after-restart'")
        seqs = t.scan(columns=["seq"]).column("seq").to_pylist()
        print(table([
            ("frames replayed from the WAL", t.recovery_report.frames),
            ("records recovered after the kill", f"{recovered} of {n}"),
            ("total records", f"{len(seqs):,}"),
            ("duplicates", len(seqs) - len(set(seqs))),
            ("Lance versions", len(t.versions())),
            ("applied LSN", t.applied_lsn),
        ]))
