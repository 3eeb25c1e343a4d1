"""Follow-ups of the WAL on object storage (moto's S3 server): read-only handles show rows
still in the object WAL, a failed PUT stops the WAL with a typed error, cleanup() removes
leftover fences and released leases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed")
boto3 = pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.engine import Table, TableOptions
from persisting.engine.objstore import ObjectStore
from persisting.engine.remote_wal import remote_wal_uri
from persisting.errors import StorageError

CHILD = os.path.join(os.path.dirname(__file__), "remote_wal_child.py")
LEASE = 1.5


def _options(**kw: Any) -> TableOptions:
    base: dict[str, Any] = dict(durability="always", wal_lease_seconds=LEASE, dedup=("producer", "seq"), flush_rows=1_000_000)
    base.update(kw)
    return TableOptions(**base)


class HeldWriter:
    """A writer subprocess that appends ``count`` rows (each acknowledged after its PUT), then
    waits for ``flush`` / ``close`` on stdin without committing anything by itself."""

    def __init__(self, uri: str, opts: dict[str, str], writer_id: str, count: int) -> None:
        args = dict(uri=uri, wal_uri=remote_wal_uri(uri), storage_options=opts, writer_id=writer_id, lease=LEASE,
                    start=1, count=count, flush_every=0, pause=0.0, hold=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, CHILD, json.dumps(args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.acks: list[int] = []
        self.expect("held")

    def expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ack "):
                self.acks.append(int(line.split()[1]))
            if line.strip() == word:
                return
        raise AssertionError(f"writer exited {self.proc.wait()}: {self.proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]

    def command(self, line: str, answer: str | None = None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        if answer:
            self.expect(answer)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.command("close")
            assert self.proc.wait(30) == 0


def _seqs(table: Table) -> Counter[int]:
    return Counter(r["seq"] for r in table.scan(columns=["producer", "seq"]).to_pylist())


def _objects(uri: str, opts: dict[str, str]) -> dict[str, Any]:
    """Every WAL object: a segment's ETag, a lease's epoch and owner (the holder renews it)."""
    store = ObjectStore(remote_wal_uri(uri), opts)
    out: dict[str, Any] = {}
    for name in store.list():
        body, etag = store.get(name)  # type: ignore[misc]
        out[name] = (json.loads(body)["epoch"], json.loads(body)["owner"]) if name.endswith("/LEASE") else etag
    return out


@pytest.fixture
def uri(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/q.lance"


def test_reader_sees_rows_still_in_the_object_wal_and_no_duplicates_after_commit(uri: str, s3_options: dict[str, str]) -> None:
    writer = HeldWriter(uri, s3_options, "bucket_0", 40)
    try:
        assert writer.acks == list(range(1, 41))
        before = _objects(uri, s3_options)
        explicit = Table(uri, read_only=True, storage_options=s3_options, wal_uri=remote_wal_uri(uri))
        implicit = Table(uri, read_only=True, storage_options=s3_options)  # the default placement beside it
        try:
            for reader in (explicit, implicit):
                assert _seqs(reader) == Counter(range(1, 41))  # acknowledged, not committed: still shown
                assert reader.count() == 40
            assert _objects(uri, s3_options) == before  # readers took no lease, wrote nothing, fenced nothing
            writer.command("flush", "flushed")  # the writer commits, then deletes its segments
            for reader in (explicit, implicit):
                assert _seqs(reader) == Counter(range(1, 41))  # followed the commit: each row once
            again = Table(uri, read_only=True, storage_options=s3_options, wal_uri=remote_wal_uri(uri))
            with again:
                assert _seqs(again) == Counter(range(1, 41))
        finally:
            explicit.close()
            implicit.close()
    finally:
        writer.close()



def _client(opts: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=opts["aws_endpoint"], region_name=opts["aws_region"],
                        aws_access_key_id=opts["aws_access_key_id"], aws_secret_access_key=opts["aws_secret_access_key"])


def test_failed_put_stops_the_wal_with_a_typed_error_naming_the_key(uri: str, s3_options: dict[str, str]) -> None:
    s3 = _client(s3_options)
    wal_bucket = f"wal-{os.urandom(6).hex()}"
    s3.create_bucket(Bucket=wal_bucket)
    table = Table(uri, storage_options=s3_options, wal_uri=f"s3://{wal_bucket}/wal", writer_id="w",
                  options=_options(wal_lease_seconds=30, background_flush=False))
    try:
        table.append([{"producer": "p", "seq": 1}])
        table.append([{"producer": "p", "seq": 2}])
        for o in s3.list_objects_v2(Bucket=wal_bucket).get("Contents", []):
            s3.delete_object(Bucket=wal_bucket, Key=o["Key"])
        s3.delete_bucket(Bucket=wal_bucket)  # the WAL's place is gone mid-run
        started = time.monotonic()
        with pytest.raises(StorageError) as first:
            table.append([{"producer": "p", "seq": 3}])
        assert f"s3://{wal_bucket}/wal/w/" in str(first.value) and first.value.path.startswith(f"s3://{wal_bucket}/wal/w/")
        assert "open it again" in str(first.value)
        assert time.monotonic() - started < 20
        started = time.monotonic()
        for seq in (4, 5):
            with pytest.raises(StorageError) as later:
                table.append([{"producer": "p", "seq": seq}])
            assert later.value is first.value  # the same error, at once: nothing more is logged
        assert time.monotonic() - started < 0.5
    finally:
        try:
            table.close()
        except StorageError:
            pass


def test_cleanup_removes_spent_fences_and_released_leases_never_live_ones(uri: str, s3_options: dict[str, str]) -> None:
    ttl = 0.6
    store = ObjectStore(remote_wal_uri(uri), s3_options)

    def open_(writer_id: str | None) -> Table:
        return Table(uri, storage_options=s3_options, wal_uri=remote_wal_uri(uri), writer_id=writer_id,
                     options=_options(wal_lease_seconds=ttl, background_flush=False))

    with open_(None) as once:  # a random identity, closed cleanly: only its released LEASE stays
        once.append([{"producer": "r", "seq": 1}])
        random_id = once.writer_id
    for seq in (1, 2):
        with open_("a") as t:  # each reopen fences the previous epoch, whose segments are gone
            t.append([{"producer": "a", "seq": seq}])
    live = open_("live")
    try:
        live.append([{"producer": "l", "seq": 1}])  # acknowledged, in a segment, not committed
        live_objects = store.list("live/")
        assert len(live_objects) == 2
        with open_("a") as cleaner:
            fences = [n for n in store.list("a/") if not n.endswith("LEASE")]
            assert len(fences) == 2  # epochs 1 and 2, closed by fences that nothing needs any more
            assert f"{random_id}/LEASE" in store.list()
            cleaner.cleanup(older_than=timedelta(minutes=1))
            assert set(fences) <= set(store.list("a/")) and f"{random_id}/LEASE" in store.list()  # not old enough
            time.sleep(ttl + 0.3)
            cleaner.cleanup()
            left = store.list()
            assert not set(fences) & set(left) and f"{random_id}/LEASE" not in left
            assert set(live_objects) <= set(left)  # a live lease and its data segment stay
            assert "a/LEASE" in left
    finally:
        live.close()
    with open_(random_id) as again:  # its lease is gone: it starts above its committed epochs
        assert again._remote is not None and again._remote.lease is not None and again._remote.lease.epoch >= 2
        again.append([{"producer": "r", "seq": 2}])
        rows = Counter((r["producer"], r["seq"]) for r in again.scan(columns=["producer", "seq"]).to_pylist())
        assert rows == Counter({("r", 1): 1, ("r", 2): 1, ("a", 1): 1, ("a", 2): 1, ("l", 1): 1})
