"""KVCacheStore shared by several processes: each finds what the others put (bit-exact, without
reopening), a concurrent eviction is a clean miss, capacity holds with two evicting writers, a
SIGKILLed writer blocks nobody, two stores on one path in one process, and the same on S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from persisting.engine import Table
from persisting.errors import ConfigError, SchemaError
from persisting.kvcache import KVCacheStore

WORKER = str(Path(__file__).with_name("kv_worker.py"))
sys.path.insert(0, str(Path(__file__).parent))
from kv_worker import make_kv, prompt  # noqa: E402

CS = 4  # chunk size: a 16-token prompt is 4 chunks of 512 bytes (float32 [2, 2, 2, 4, 8])
CHUNK_BYTES = 2 * 2 * 2 * CS * 8 * 4


class Proc:
    """One worker process (a fresh interpreter: Lance is not fork-safe) with a store in it."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen([sys.executable, WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1, env={**os.environ, **(env or {})})
        self.acks: list[int] = []
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            assert self._line() == {"ready": True}
            self.ready = True

    def _line(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line, f"worker {self.p.pid} died (exit {self.p.poll()})"
        return json.loads(line)

    def send(self, cmd: str, **kw: Any) -> None:
        self.wait_ready()
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.p.stdin.flush()

    def reply(self) -> Any:
        while True:
            msg = self._line()
            if "ack" in msg:
                self.acks.append(msg["ack"])
                continue
            assert "error" not in msg, msg
            return msg["ok"]

    def call(self, cmd: str, **kw: Any) -> Any:
        self.send(cmd, **kw)
        return self.reply()

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                self.call("close")
            finally:
                self.p.wait(30)


@pytest.fixture
def procs() -> Any:
    started: list[Proc] = []

    def start(n: int, **kw: Any) -> list[Proc]:
        new = [Proc(**kw) for _ in range(n)]
        started.extend(new)
        for p in new:
            p.wait_ready()
        return new

    yield start
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait(10)


def raw_bytes(path: Path, ns: str) -> int:
    """Payload bytes of every row the namespace's table holds (duplicates and orphans too)."""
    with Table(str(path / f"{ns}.lance"), read_only=True) as t:
        return int(sum(t.scan(columns=["nbytes"]).column("nbytes").to_pylist()))


def test_processes_read_each_others_chunks_without_reopening(tmp_path: Path, procs: Any) -> None:
    ps = procs(3)
    for p in ps:
        p.call("open", path=str(tmp_path), namespace="m", chunk_size=CS, shared=True)
    for k, p in enumerate(ps):  # each puts its own prompts, all opened before anything existed
        for s in range(k * 10, k * 10 + 4):
            p.call("put", seed=s)
    for p in ps:
        for s in [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]:
            assert p.call("lookup", seed=s) == {"tokens": 16}
            assert p.call("get", seed=s) == {"tokens": 16, "exact": True}
    # the shared prefix (2 chunks) was stored once, by whoever came first
    assert ps[1].call("put", seed=99) == {"stored": 8, "bytes": 28 * CHUNK_BYTES}
    assert ps[2].call("stats")["entries"] == 28
    assert raw_bytes(tmp_path, "m") == 28 * CHUNK_BYTES


def test_eviction_in_another_process_is_a_clean_miss(tmp_path: Path, procs: Any) -> None:
    writer, reader = procs(2)
    writer.call("open", path=str(tmp_path), namespace="m", chunk_size=CS, capacity_bytes=3 * 4 * CHUNK_BYTES)
    reader.call("open", path=str(tmp_path), namespace="m", chunk_size=CS, read_only=True)
    writer.call("put", seed=1)
    assert reader.call("get", seed=1) == {"tokens": 16, "exact": True}  # indexed by the reader
    for s in (2, 3, 4):
        writer.call("put", seed=s)  # the fourth prompt evicts the first (least recently used)
    assert writer.call("stats")["evictions"] == 4
    assert reader.call("get", seed=1) == {"tokens": 0, "exact": None}
    assert reader.call("lookup", seed=1) == {"tokens": 0}
    assert reader.call("get", seed=4) == {"tokens": 16, "exact": True}
    # gets racing a writer that evicts, compacts and drops old versions all the time:
    # every answer is the right bytes or a miss, never an error
    writer.send("put_loop", seeds=list(range(10, 50)), compact_every=5)
    seen = reader.call("get_loop", seeds=list(range(10, 50)), seconds=3.0)
    writer.reply()
    assert seen["wrong"] == 0 and seen["hits"] > 0 and seen["misses"] > 0, seen
    assert reader.call("get", seed=49) == {"tokens": 16, "exact": True}


def test_capacity_holds_with_two_evicting_writers(tmp_path: Path, procs: Any) -> None:
    cap = 24 * CHUNK_BYTES  # every prompt: 2 chunks shared by all, 2 of its own
    a, b = procs(2)
    for p in (a, b):
        p.call("open", path=str(tmp_path), namespace="m", chunk_size=CS, capacity_bytes=cap, shared=True)
    a.send("put_loop", seeds=list(range(0, 30)))
    b.send("put_loop", seeds=list(range(100, 130)))
    ra, rb = a.reply(), b.reply()
    # the stated tolerance: after its put (and eviction) a writer sees at most capacity plus the
    # new chunks of the other writer's put in flight (at most one whole prompt)
    assert ra["peak_bytes"] <= cap + 4 * CHUNK_BYTES and rb["peak_bytes"] <= cap + 4 * CHUNK_BYTES, (ra, rb)
    # no put in flight: the namespace holds at most capacity, and eviction did not empty it
    total = raw_bytes(tmp_path, "m")
    assert cap // 2 <= total <= cap, total
    sa, sb = a.call("stats"), b.call("stats")
    assert sa["evictions"] > 0 and sb["evictions"] > 0
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS, read_only=True) as fresh:
        assert fresh.stats()["bytes"] == total
        assert fresh.lookup(prompt(129, 16, True)) + fresh.lookup(prompt(29, 16, True)) > 16  # the newest survive


def test_sigkilled_writer_blocks_nobody_and_its_acknowledged_chunks_stay(tmp_path: Path, procs: Any) -> None:
    victim, other = procs(2)
    for p in (victim, other):
        p.call("open", path=str(tmp_path), namespace="m", chunk_size=CS)
    victim.send("put_loop", seeds=list(range(1000)), ack=True)
    deadline = time.monotonic() + 60
    while len(victim.acks) < 8 and time.monotonic() < deadline:
        msg = victim._line()
        victim.acks.append(msg["ack"])
    victim.kill()  # most likely inside a put: its loop does nothing else
    acked = victim.acks
    assert len(acked) >= 8
    for s in acked:
        assert other.call("get", seed=s) == {"tokens": 16, "exact": True}
    other.call("put", seed=5000)
    (late,) = procs(1)  # a new writer opens (and adopts the dead writer's WAL directory)
    late.call("open", path=str(tmp_path), namespace="m", chunk_size=CS)
    late.call("put", seed=5001)
    for s in [*acked, 5000, 5001]:
        assert late.call("get", seed=s) == {"tokens": 16, "exact": True}
    assert other.call("get", seed=5001) == {"tokens": 16, "exact": True}
    # a writer killed inside its commit (Lance committed, nothing fsynced or acknowledged yet)
    (mid,) = procs(1, env={"PERSISTING_KILL_POINT": "after_commit"})
    mid.call("open", path=str(tmp_path), namespace="m", chunk_size=CS)
    mid.send("put", seed=6000)
    assert mid.p.wait(30) == -signal.SIGKILL
    assert other.call("get", seed=6000) in ({"tokens": 16, "exact": True}, {"tokens": 0, "exact": None})
    other.call("put", seed=6001)
    assert late.call("get", seed=6001) == {"tokens": 16, "exact": True}


def test_two_stores_on_one_path_in_one_process(tmp_path: Path) -> None:
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as s1, \
            KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as s2:
        s1.put(prompt(1, 16), make_kv(1, 16))
        np.testing.assert_array_equal(s2.get(prompt(1, 16)), make_kv(1, 16))
        assert s2.put(prompt(1, 16), make_kv(1, 16)) == 0  # already there: not written twice
        s2.put(prompt(2, 16), make_kv(2, 16))
        np.testing.assert_array_equal(s1.get(prompt(2, 16)), make_kv(2, 16))
        with pytest.raises(SchemaError, match="namespace 'm'"):  # s1's layout binds s2 too
            s2.put(prompt(3, 16), make_kv(3, 16, dim=4))
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as s:
        assert len(s) == 8
        # another chunk size would see every chain as an orphan and delete it: refused, typed
        with pytest.raises(ConfigError, match=f"{tmp_path}.*chunk_size={CS}"):
            KVCacheStore(tmp_path, namespace="m", chunk_size=2 * CS)
        assert s.lookup(prompt(2, 16)) == 16
    with pytest.raises(ConfigError, match=str(tmp_path)):
        KVCacheStore(tmp_path, namespace="m", refresh_interval=-1)


def test_refresh_interval_bounds_staleness_and_vanished_rows_are_misses(tmp_path: Path) -> None:
    with KVCacheStore(tmp_path, namespace="m", chunk_size=CS) as w, \
            KVCacheStore(tmp_path, namespace="m", chunk_size=CS, read_only=True, refresh_interval=3600) as r:
        w.put(prompt(1, 16), make_kv(1, 16))
        assert r.lookup(prompt(1, 16)) == 16  # a miss always checks for other writers' commits
        np.testing.assert_array_equal(r.get(prompt(1, 16)), make_kv(1, 16))
        w.capacity_bytes = 4 * CHUNK_BYTES
        w.put(prompt(2, 16), make_kv(2, 16))  # evicts prompt 1
        # r's index is stale (within refresh_interval): it may still serve prompt 1's bytes from
        # the version it reads, which are right
        np.testing.assert_array_equal(r.get(prompt(1, 16)), make_kv(1, 16))
        w.compact()  # rewrites the live rows and removes the files of older versions
        assert r.get(prompt(1, 16)) is None  # its rows vanished under r: a miss, not an error
        assert r.lookup(prompt(1, 16)) == 0
        np.testing.assert_array_equal(r.get(prompt(2, 16)), make_kv(2, 16))
        assert r.stats()["corrupt"] == 0  # a vanished file is not counted as damage


def test_two_processes_on_s3(tmp_path: Path, procs: Any, s3_bucket: str, s3_options: dict[str, str]) -> None:
    uri = f"s3://{s3_bucket}/kv"
    a, b = procs(2)
    a.call("open", path=uri, namespace="m", chunk_size=CS, storage_options=s3_options,
           wal_dir=str(tmp_path / "wal-a"), capacity_bytes=12 * CHUNK_BYTES)
    b.call("open", path=uri, namespace="m", chunk_size=CS, storage_options=s3_options, wal_dir=str(tmp_path / "wal-b"))
    a.call("put", seed=1)
    assert b.call("get", seed=1) == {"tokens": 16, "exact": True}
    b.call("put", seed=2)
    assert a.call("get", seed=2) == {"tokens": 16, "exact": True}
    a.call("put", seed=3)
    a.call("put", seed=4)  # over capacity: a evicts seed 1 (least recent in its view)
    assert b.call("get", seed=1) == {"tokens": 0, "exact": None}
    for s in (2, 3, 4):
        assert b.call("get", seed=s) == {"tokens": 16, "exact": True}
