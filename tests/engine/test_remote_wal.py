"""The WAL on object storage (moto's S3 server): group commit, SIGKILLed and SIGSTOPped
writers, takeover by epoch with fencing, and exactly-once across retried appends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest

pytest.importorskip("moto.server", reason="moto[server] is not installed")
pytest.importorskip("boto3", reason="boto3 is not installed")

from persisting.engine import Table, TableOptions
from persisting.engine.objstore import ObjectStore
from persisting.engine.remote_wal import remote_wal_uri
from persisting.errors import FencedError, LockedError

CHILD = os.path.join(os.path.dirname(__file__), "remote_wal_child.py")
LEASE = 1.5


def _options(**kw: Any) -> TableOptions:
    base: dict[str, Any] = dict(durability="always", wal_lease_seconds=LEASE, dedup=("producer", "seq"), flush_rows=1_000_000)
    base.update(kw)
    return TableOptions(**base)


def _open(uri: str, opts: dict[str, str], writer_id: str | None, **kw: Any) -> Table:
    return Table(uri, storage_options=opts, wal_uri=remote_wal_uri(uri), writer_id=writer_id, options=_options(**kw))


class Child:
    """A writer subprocess; ``acks`` fills as it acknowledges rows."""

    def __init__(self, uri: str, opts: dict[str, str], writer_id: str | None, *, start: int = 1, count: int = 100_000,
                 flush_every: int = 0, pause: float = 0.0) -> None:
        args = dict(uri=uri, wal_uri=remote_wal_uri(uri), storage_options=opts, writer_id=writer_id, lease=LEASE,
                    start=start, count=count, flush_every=flush_every, pause=pause)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.acks: list[int] = []
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.startswith("ack "):
                self.acks.append(int(line.split()[1]))

    def wait_acks(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < n:
            if self.proc.poll() is not None:
                raise AssertionError(f"writer exited {self.proc.returncode}: {self.proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"only {len(self.acks)} acks"
            time.sleep(0.01)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(5)


def _seqs(table: Table, producer: str = "p1") -> Counter[int]:
    rows = table.scan(columns=["producer", "seq"]).to_pylist()
    return Counter(r["seq"] for r in rows if r["producer"] == producer)


@pytest.fixture
def uri(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/q.lance"


def test_group_commit_one_put_for_many_concurrent_appends(uri: str, s3_options: dict[str, str]) -> None:
    table = _open(uri, s3_options, "g", dedup=None, wal_group_interval=0.02)
    try:
        def work(k: int) -> None:
            for i in range(10):
                table.append([{"k": k, "i": i}])  # returns only once its group's PUT succeeded

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        segments = [n for n in ObjectStore(remote_wal_uri(uri), s3_options).list("g/") if not n.endswith("LEASE")]
        assert table.count() == 80
        assert 0 < len(segments) < 40, segments  # 80 appends, far fewer PUTs
    finally:
        table.close()
    assert ObjectStore(remote_wal_uri(uri), s3_options).list("g/") == ["g/LEASE"]  # a clean close leaves no segment


@pytest.mark.parametrize("flush_every", [0, 37])
def test_sigkilled_writer_loses_no_acknowledged_row(uri: str, s3_options: dict[str, str], flush_every: int) -> None:
    child = Child(uri, s3_options, "bucket_0", flush_every=flush_every)
    child.wait_acks(120)
    child.kill()
    acked = list(child.acks)
    started = time.monotonic()
    with _open(uri, s3_options, "bucket_0") as table:  # the same identity: takes the lease over
        took = time.monotonic() - started
        seqs = _seqs(table)
        assert set(acked) <= set(seqs), sorted(set(acked) - set(seqs))[:10]
        assert max(seqs.values()) == 1  # no row twice
        assert took < LEASE + 3
        table.append([{"producer": "p1", "seq": acked[-1], "value": "retry"}])  # a retried put: dropped
        table.append([{"producer": "p1", "seq": max(seqs) + 1, "value": "new"}])
        assert table.count() == len(seqs) + 1
    with _open(uri, s3_options, "bucket_0") as again:  # a clean close released: no wait, no replay
        assert _seqs(again) == seqs + Counter({max(seqs) + 1: 1})


def test_dead_writer_with_random_identity_is_adopted_by_any_opener(uri: str, s3_options: dict[str, str]) -> None:
    child = Child(uri, s3_options, None)
    child.wait_acks(30)
    child.kill()
    acked = list(child.acks)
    time.sleep(LEASE + 0.2)  # its lease expires unrenewed
    with _open(uri, s3_options, "someone-else") as table:
        seqs = _seqs(table)
        assert set(acked) <= set(seqs) and max(seqs.values()) == 1


def test_paused_old_owner_is_fenced_after_takeover(uri: str, s3_options: dict[str, str]) -> None:
    child = Child(uri, s3_options, "bucket_1", pause=0.005)
    child.wait_acks(40)
    child.proc.send_signal(signal.SIGSTOP)
    time.sleep(0.2)
    paused_acks = len(child.acks)
    try:
        with _open(uri, s3_options, "bucket_1") as table:  # waits out the paused owner's lease
            table.append([{"producer": "p2", "seq": 1, "value": "new owner"}])
            table.flush()
            child.proc.send_signal(signal.SIGCONT)
            assert child.proc.wait(30) == 3, child.lines[-5:]  # its next PUT or renewal is fenced
            assert "fenced FencedError" in child.lines
            assert len(child.acks) <= paused_acks + 1  # at most the append whose PUT landed before the pause
            table.refresh()
            seqs = _seqs(table)
            assert set(child.acks) <= set(seqs)
            assert max(seqs.values()) == 1
    finally:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGCONT)
            child.kill()


def test_second_live_owner_waits_then_is_refused(uri: str, s3_options: dict[str, str]) -> None:
    with _open(uri, s3_options, "solo") as table:
        table.append([{"producer": "p1", "seq": 1}])
        started = time.monotonic()
        with pytest.raises(LockedError) as err:
            _open(uri, s3_options, "solo")
        assert not isinstance(err.value, FencedError) and "solo" in str(err.value)
        assert time.monotonic() - started >= LEASE  # it waited for the lease to lapse; renewals kept it
        table.append([{"producer": "p1", "seq": 2}])
    with _open(uri, s3_options, "solo") as again:
        assert sorted(_seqs(again)) == [1, 2]
