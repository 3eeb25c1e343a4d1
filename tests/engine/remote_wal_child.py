"""A writer process for the object-store WAL tests: appends rows one by one and prints each
acknowledged sequence number (flushed to the pipe) as ``ack <seq>``.

argv[1] is JSON: uri, wal_uri, storage_options, writer_id (or null), lease, start, count,
flush_every (commit to Lance every N rows, 0 = never), pause (seconds between appends),
hold (optional: after the appends print ``held`` and obey stdin lines ``flush`` -> commit and
print ``flushed``, ``close`` -> close and exit).
A FencedError prints ``fenced`` and exits with status 3.
"""

from __future__ import annotations

import json
import sys
import time

from persisting.engine import Table, TableOptions
from persisting.errors import FencedError


def main() -> int:
    a = json.loads(sys.argv[1])
    options = TableOptions(
        durability="always", wal_lease_seconds=a["lease"], dedup=("producer", "seq"), flush_rows=1_000_000,
        background_flush=False,
    )
    table = Table(a["uri"], storage_options=a["storage_options"], wal_uri=a["wal_uri"], writer_id=a["writer_id"], options=options)
    print("open", table.writer_id, flush=True)
    try:
        for seq in range(a["start"], a["start"] + a["count"]):
            table.append([{"producer": "p1", "seq": seq, "value": f"v{seq}"}])
            print("ack", seq, flush=True)
            if a["flush_every"] and seq % a["flush_every"] == 0:
                table.flush()
            time.sleep(a["pause"])
        if a.get("hold"):
            print("held", flush=True)
            for line in sys.stdin:
                if line.strip() == "flush":
                    table.flush()
                    print("flushed", flush=True)
                elif line.strip() == "close":
                    break
        table.close()
    except FencedError as exc:
        print("fenced", type(exc).__name__, flush=True)
        try:
            table.close()
        except FencedError:
            pass
        return 3
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
