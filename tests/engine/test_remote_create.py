"""Creating a table whose WAL is on object storage while a writer on another host creates it.

Lance turns two concurrent creations of one dataset into an overwrite (measured on moto: four
processes with their own TMPDIR, so no shared local creation lock, each creating 12 new tables
at the same moments: 2 of 5 runs lost a writer's rows or failed its commit with "Dataset
already exists"). The engine takes a creation lease on the object store around its
check-and-create; here the test plays the other host: it holds that lease, creates the dataset
itself meanwhile, and the child's first flush must wait and then append."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lance
import pyarrow as pa
import pytest

from persisting.engine.lease import Lease
from persisting.engine.objstore import ObjectStore

CHILD = Path(__file__).with_name("remote_create_child.py")


def test_creation_waits_for_another_hosts_creator(tmp_path: Path, s3_bucket: str, s3_options: dict[str, str]) -> None:
    uri = f"s3://{s3_bucket}/t.lance"
    lease = Lease.acquire(ObjectStore(uri + "/_persisting", s3_options), "create", ttl=10.0, wait=0)
    env = {**os.environ, "TMPDIR": str(tmp_path), "PERSISTING_TEST_S3": json.dumps(s3_options),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, str(CHILD), uri], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["open"], child.stderr.read() if child.stderr else ""
        time.sleep(1.5)
        assert child.poll() is None, "the child flushed while another host held the creation lease"
        with pytest.raises(ValueError):
            lance.dataset(uri, storage_options=s3_options)  # the child did not create it
        lance.write_dataset(pa.table({"pid": pa.array([0, 0], pa.int64()), "i": pa.array([7, 8], pa.int64())}),
                            uri, mode="create", storage_options=s3_options)
    finally:
        lease.release()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and out.split() == ["done"], err[-3000:]
    rows = lance.dataset(uri, storage_options=s3_options).to_table().to_pylist()
    assert sorted((r["pid"] == 0, r["i"]) for r in rows) == [(False, 0), (False, 1), (False, 2), (True, 7), (True, 8)]
