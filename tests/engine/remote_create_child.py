"""Child of test_remote_create.py, a separate host (its own TMPDIR): open the new table
``<uri>`` with its WAL on object storage, append 3 rows, print ``open``, flush (which creates
the dataset), print ``done``. S3 options come as JSON in PERSISTING_TEST_S3."""

from __future__ import annotations

import json
import os
import sys

from persisting.engine import Table, TableOptions
from persisting.engine.remote_wal import remote_wal_uri


def main(uri: str) -> None:
    options = json.loads(os.environ["PERSISTING_TEST_S3"])
    with Table(uri, storage_options=options, wal_uri=remote_wal_uri(uri),
               options=TableOptions(wal_lease_seconds=2.0)) as table:
        table.append([{"pid": os.getpid(), "i": i} for i in range(3)])
        print("open", flush=True)
        table.flush()
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
