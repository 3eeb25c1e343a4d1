"""A writer process for the object-store WAL kill campaign (``test_remote_kill.py``).

argv[1] is JSON: uri, wal_uri, storage_options, writer_id, mode ("always" | "batch"), lease,
start (first seq), seed, flush_rows, payload (bytes per row), barrier (a path: wait for it to
exist before the first append), acks (a local file), pause (seconds
slept after each append: keeps ``batch`` from writing tens of thousands of rows), optional stop_in_commit (N: the N-th
Lance commit of this writer prints ``committing`` and SIGSTOPs its own process after the
table's owner check passed, right before Lance commits).

It opens the table, prints ``open <writer id>``, waits for the barrier, then appends rows
``{producer: writer id, seq, payload, crc}`` one by one, seqs ``start, start+1, ...``. A seq is
written to the ack file (one line, fsynced) only once it is acknowledged: ``always`` -- its
``append`` returned; ``batch`` -- a ``sync()`` that returned after its append (called after a
random 1..20 appends). Before each append it prints ``try <seq>`` (flushed), so the parent
can kill it while an append (its group PUT) is in flight. A FencedError prints ``fenced`` and
exits with status 3; the child never stops by itself otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
import zlib

from persisting.engine import Table, TableOptions
from persisting.errors import FencedError


def payload_of(seq: int, size: int) -> bytes:
    """The exact payload of ``seq``: a torn or garbled row cannot match it."""
    block = hashlib.blake2b(str(seq).encode(), digest_size=64).digest()
    return (block * (size // len(block) + 1))[:size]


def row_of(producer: str, seq: int, size: int) -> dict[str, object]:
    data = payload_of(seq, size)
    return {"producer": producer, "seq": seq, "payload": data, "crc": zlib.crc32(data)}


def _stop_in_commit(n: int) -> None:
    """Pause this process inside its n-th Lance commit, after the owner check passed on the
    version the append is based on (a real commit follows on SIGCONT): the window a slow or
    paused old owner commits through."""
    real = Table._append
    count = [0]

    def append(self: Table, *args: object, **kw: object) -> object:
        count[0] += 1
        if count[0] == n and self.writer_id == "paused":
            print("committing", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
        return real(self, *args, **kw)

    Table._append = append  # type: ignore[method-assign]


def main() -> int:
    a = json.loads(sys.argv[1])
    rng = random.Random(a["seed"])
    options = TableOptions(
        durability=a["mode"], wal_sync_interval=0.02, wal_lease_seconds=a["lease"], dedup=("producer", "seq"),
        flush_rows=a["flush_rows"],
    )
    if a.get("stop_in_commit"):
        _stop_in_commit(a["stop_in_commit"])
    table = Table(a["uri"], storage_options=a["storage_options"], wal_uri=a["wal_uri"], writer_id=a["writer_id"],
                  options=options)
    print("open", table.writer_id, flush=True)
    while not os.path.exists(a["barrier"]):
        time.sleep(0.005)
    fd = os.open(a["acks"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pending: list[int] = []
    next_sync = rng.randint(1, 20)
    try:
        seq = a["start"]
        while True:
            print("try", seq, flush=True)
            table.append([row_of(a["writer_id"], seq, a["payload"])])
            pending.append(seq)
            time.sleep(a.get("pause", 0.0))
            if a["mode"] == "batch":
                next_sync -= 1
                if next_sync > 0:
                    seq += 1
                    continue
                table.sync()
                next_sync = rng.randint(1, 20)
            os.write(fd, "".join(f"{s}\n" for s in pending).encode())
            os.fsync(fd)
            pending.clear()
            seq += 1
    except FencedError as exc:
        print("fenced", type(exc).__name__, flush=True)
        try:
            table.close()  # commits nothing (fenced) and stops the WAL's threads
        except FencedError:
            pass
        return 3


if __name__ == "__main__":
    sys.exit(main())
