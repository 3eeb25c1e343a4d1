"""``Table.discard_pending`` on S3 (moto): durability ``none`` only; what it drops never reaches
the object store, for this process or another one; a writer killed with pending rows leaves
only what it flushed, and the next writer goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from persisting.engine import Table, TableOptions
from persisting.errors import ConfigError

NONE = TableOptions(durability="none")

_READER = textwrap.dedent(
    """
    import json, sys
    from persisting.engine import Table
    with Table(sys.argv[1], storage_options=json.loads(sys.argv[2]), read_only=True) as t:
        print(json.dumps(sorted(t.scan(columns=["x"]).column("x").to_pylist())))
    """
)

_KILLED = textwrap.dedent(
    """
    import json, sys, time
    from persisting.engine import Table, TableOptions
    t = Table(sys.argv[1], storage_options=json.loads(sys.argv[2]), wal_dir=sys.argv[3],
              options=TableOptions(durability="none"))
    t.append([{"x": 1}, {"x": 2}])
    t.flush()
    t.append([{"x": 99}])            # pending: promised nothing before a flush
    print("ready", flush=True)
    time.sleep(120)
    """
)


def _other_process_reads(uri: str, opts: dict[str, str]) -> list[int]:
    out = subprocess.run([sys.executable, "-c", _READER, uri, json.dumps(opts)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_discard_pending_on_s3_drops_only_uncommitted_rows(s3_bucket: str, s3_options: dict[str, str],
                                                            tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/none.lance"
    wal = str(tmp_path / "wal")
    with Table(uri, storage_options=s3_options, wal_dir=wal, options=NONE) as t:
        t.append([{"x": 1}])
        t.flush()
        t.append([{"x": 2}, {"x": 3}])
        assert t.count() == 3  # this writer sees its pending rows
        assert t.discard_pending() == 2
        assert t.count() == 1 and t.discard_pending() == 0
        t.append([{"x": 4}])
        t.flush()
        assert _other_process_reads(uri, s3_options) == [1, 4]
    with Table(uri, storage_options=s3_options, wal_dir=wal, options=NONE) as t:
        assert sorted(t.scan(columns=["x"]).column("x").to_pylist()) == [1, 4]


def test_discard_pending_refused_where_rows_were_acknowledged_on_s3(s3_bucket: str, s3_options: dict[str, str],
                                                                     tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/batch.lance"
    with Table(uri, storage_options=s3_options, wal_dir=str(tmp_path / "wal"),
               options=TableOptions(durability="batch")) as t:
        t.append([{"x": 1}])
        with pytest.raises(ConfigError, match="cannot be discarded") as info:
            t.discard_pending()
        assert uri in str(info.value) and info.value.details.get("durability") == "batch"
        assert t.count() == 1
    assert _other_process_reads(uri, s3_options) == [1]  # the acknowledged row was kept


def test_writer_killed_with_pending_rows_leaves_only_what_it_flushed(s3_bucket: str, s3_options: dict[str, str],
                                                                     tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/killed.lance"
    wal = str(tmp_path / "wal")
    child = subprocess.Popen([sys.executable, "-c", _KILLED, uri, json.dumps(s3_options), wal],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert _other_process_reads(uri, s3_options) == [1, 2]
    with Table(uri, storage_options=s3_options, wal_dir=wal, options=NONE) as t:  # the next writer goes on
        t.append([{"x": 3}])
        assert t.discard_pending() == 1
        t.append([{"x": 4}])
    assert _other_process_reads(uri, s3_options) == [1, 2, 4]
