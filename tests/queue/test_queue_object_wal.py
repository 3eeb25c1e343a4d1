"""PersistingBackend with its bucket and WAL on object storage (moto S3): a process owning a
bucket is SIGKILLed mid-stream and another process building the same bucket (as Pulsing does
on a survivor) has every acknowledged record, once; a retried put is stored once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed")
pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.errors import ConfigError
from persisting.queue import PersistingBackend

LEASE = 1.5

CHILD = r"""
import asyncio, json, sys
from persisting.queue import PersistingBackend
a = json.loads(sys.argv[1])
async def main():
    b = PersistingBackend(bucket_id=3, storage_path=a["storage"], **a["options"])
    print("open", flush=True)
    for seq in range(1, 100000):
        await b.put({"id": f"k{seq}", "_producer": "prod", "_seq": seq, "v": seq})
        print("ack", seq, flush=True)
asyncio.run(main())
"""


def _options(s3_bucket: str, s3_options: dict[str, str]) -> dict[str, Any]:
    return dict(uri=f"s3://{s3_bucket}/queues", storage_options=s3_options, wal="object", topic="t",
                wal_lease_seconds=LEASE, dedup=True)


def test_killed_bucket_owner_loses_no_acknowledged_record(tmp_path: Path, s3_bucket: str, s3_options: dict[str, str]) -> None:
    options = _options(s3_bucket, s3_options)
    args = json.dumps({"storage": str(tmp_path / "node-a"), "options": options})
    child = subprocess.Popen([sys.executable, "-c", CHILD, args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    acks: list[int] = []

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("ack "):
                acks.append(int(line.split()[1]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while len(acks) < 80:
        assert child.poll() is None, child.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    reader.join(5)
    acked = list(acks)

    async def survivor() -> None:
        backend = PersistingBackend(bucket_id=3, storage_path=str(tmp_path / "node-b"), **options)  # another node's disk
        try:
            records = await backend.get(100_000, 0)
            seqs = Counter(r["_seq"] for r in records)
            assert set(acked) <= set(seqs), sorted(set(acked) - set(seqs))[:10]
            assert max(seqs.values()) == 1
            last = acked[-1]
            await backend.put({"id": "retry", "_producer": "prod", "_seq": last, "v": -1})  # its ack was lost: retried
            await backend.put({"id": "next", "_producer": "prod", "_seq": max(seqs) + 1, "v": 0})
            assert backend.total_count() == len(seqs) + 1
            stats = await backend.stats()
            assert stats["wal"] == "object" and stats["durability"] == "always"
        finally:
            backend.close()

    asyncio.run(survivor())


def test_object_wal_options_are_checked(tmp_path: Path, s3_options: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="needs uri"):
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), wal="object")
    with pytest.raises(ConfigError, match="'local' or 'object'"):
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), uri="s3://b/q", wal="s3")
    with pytest.raises(ConfigError, match="storage_options needs uri"):
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), storage_options=s3_options)
    with pytest.raises(ConfigError, match="object-store URI"):
        PersistingBackend(bucket_id=0, storage_path=str(tmp_path), uri="/local/path")
