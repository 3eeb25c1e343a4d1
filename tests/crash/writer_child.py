"""Child process for the crash tests: writes records to a Table and reports what was acknowledged.

Run as a script (never imported by the child of a fork: Lance is not fork-safe)::

    python writer_child.py URI MODE ACTION [--job JSON | --job-stdin]

MODE is the durability ("none", "batch", "always"). ACTION is one of

``loop``      open the table, then append records forever (until the parent SIGKILLs us)
``killpoint`` open the table, make ``appends`` appends, then ``flush()``; run with
              PERSISTING_KILL_POINT set, the flush never returns
``crash``     open the table, make ``appends`` appends, then SIGKILL ourselves (no flush,
              no close: the WAL alone holds the rows)
``open``      open the table (recovery), print READY and exit without closing

Every record carries a unique integer ``seq``; its other fields are functions of ``seq`` (see
:func:`record`) so a reader can tell a garbled row from a good one.

Protocol on stdout, one line per event, each written and flushed before the next step:

``OPENING``                 about to construct the Table (recovery runs in there)
``READY <applied> <last>``  Table open: its applied LSN and last LSN
``T <lo> <hi>``             about to append seqs lo..hi-1 (written *before* ``append``)
``A <lo> <hi> <lsn>``       seqs lo..hi-1 are acknowledged durable: for WAL modes when
                            ``append`` returned (with its LSN); for "none" when the
                            ``flush()`` that committed them returned (with its LSN)
``FLUSHING``                about to call ``flush()`` (killpoint action)
``FLUSHED <lsn>``           ``flush()`` returned (it should not have, under a kill point)

With ``--job-stdin`` the child imports everything first and then blocks reading one JSON line
from stdin, so a parent can start it early and hide the ~1 s import behind other work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time

EXTRA_FROM = 40  # records with seq >= EXTRA_FROM and seq % 3 == 0 carry an extra field


def record(seq: int) -> dict:
    """The record for ``seq``; the ``extra`` field appears only later, so the schema evolves
    (a new nullable column) while the crash tests run."""
    rec = {"seq": seq, "payload": f"p{seq}", "val": seq * 0.5, "pad": "x" * (seq % 23)}
    if seq >= EXTRA_FROM and seq % 3 == 0:
        rec["extra"] = seq * 2
    return rec


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("mode", choices=["none", "batch", "always"])
    parser.add_argument("action", choices=["loop", "killpoint", "crash", "open"])
    parser.add_argument("--job", default="{}", help="JSON object of job parameters")
    parser.add_argument("--job-stdin", action="store_true", help="read the job JSON from stdin after importing")
    args = parser.parse_args(argv)

    from persisting.engine.options import TableOptions
    from persisting.engine.table import Table

    job = json.loads(args.job)
    if args.job_stdin:
        line = sys.stdin.readline()
        if not line.strip():
            return 0  # the parent did not need us after all
        job.update(json.loads(line))

    options = TableOptions(
        durability=args.mode,
        wal_sync_interval=float(job.get("sync_interval", 0.02)),
        flush_rows=int(job.get("flush_rows", 100)),
        max_wal_size=int(job.get("max_wal_size", 1 << 20)),
        compact_fragments=int(job.get("compact_fragments", 8)),
    )
    rng = random.Random(job.get("seed", 0))
    seq = int(job.get("start_seq", 0))

    _say("OPENING")
    table = Table(args.uri, options=options, wal_dir=job.get("wal_dir"), storage_options=job.get("storage_options"))
    _say(f"READY {table.applied_lsn} {table.last_lsn}")

    if args.action == "open":
        os._exit(0)  # no close: a crash right after recovery

    if args.action in ("killpoint", "crash"):
        per = int(job.get("per", 3))
        for _ in range(int(job.get("appends", 10))):
            _say(f"T {seq} {seq + per}")
            lsn = table.append([record(s) for s in range(seq, seq + per)])
            if args.mode != "none":
                _say(f"A {seq} {seq + per} {lsn}")
            seq += per
        if args.action == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        _say("FLUSHING")
        lsn = table.flush()
        _say(f"FLUSHED {lsn}")
        os._exit(3)

    # loop: append until killed
    deadline = time.monotonic() + float(job.get("max_seconds", 60))
    pending: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        n = rng.randint(1, 5)
        _say(f"T {seq} {seq + n}")
        lsn = table.append([record(s) for s in range(seq, seq + n)])
        if args.mode == "none":
            # acknowledged only once a flush() that covers them returns
            pending.append((seq, seq + n))
            if rng.random() < 0.5:
                applied = table.flush()
                for lo, hi in pending:
                    _say(f"A {lo} {hi} {applied}")
                pending = []
        else:
            _say(f"A {seq} {seq + n} {lsn}")
        seq += n
    _say("TIMEOUT")
    os._exit(2)


if __name__ == "__main__":
    sys.exit(main())
