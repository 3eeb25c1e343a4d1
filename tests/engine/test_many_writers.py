"""Many writers on one table: in one process, across processes racing to create it, and
dead writers' WALs adopted exactly once by racing openers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from persisting.engine import Table, TableOptions
from persisting.errors import LockedError

CHILD = textwrap.dedent(
    """
    import sys
    from persisting.engine import Table, TableOptions
    uri, k, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    t = Table(uri, options=TableOptions(durability="always", flush_rows=7)) if mode != "open" else None
    print("ready", flush=True)
    sys.stdin.readline()  # every child is imported and open before any of them goes on
    if mode == "open":  # race to open (and adopt orphans), then append one row and close
        t = Table(uri, options=TableOptions(durability="always"))
        t.append([{"k": k, "i": -1}])
        t.close()
    elif mode == "crash":  # acknowledge rows, then die without flushing
        for i in range(20):
            t.append([{"k": k, "i": i}])
        print("acked", flush=True)
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        for i in range(20):
            t.append([{"k": k, "i": i}])
        t.close()
    """
)


def _run(uri: str, n: int, mode: str) -> list[subprocess.CompletedProcess[str]]:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, uri, str(k), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(n)]
    for p in procs:  # a barrier: all ready, then all go at once
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr.read() if p.stderr else ""
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _pairs(t: Table) -> list[tuple[int, int]]:
    return [(r["k"], r["i"]) for r in t.scan().to_pylist()]


def test_four_processes_racing_to_create_one_table_keep_every_row(tmp_path: Path) -> None:
    """Lance turns concurrent creates into overwrites; the engine serialises creation."""
    uri = str(tmp_path / "t.lance")
    for res in _run(uri, 4, "write"):
        assert res.returncode == 0, res.stderr
    with Table(uri, read_only=True) as t:
        pairs = _pairs(t)
    assert sorted(pairs) == sorted((k, i) for k in range(4) for i in range(20))
    for k in range(4):  # each writer's rows in its own order
        assert [i for kk, i in pairs if kk == k] == list(range(20))


def test_dead_writers_are_adopted_exactly_once_by_racing_openers(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri) as t:
        t.append([{"k": -1, "i": -1}])
    for res in _run(uri, 3, "crash"):
        assert res.returncode == -9 and "acked" in res.stdout, res.stderr
    assert len(os.listdir(tmp_path / "t.wal" / "writers")) == 3  # three orphans on disk
    for res in _run(uri, 3, "open"):  # three processes open at once: each orphan once
        assert res.returncode == 0, res.stderr
    with Table(uri, read_only=True) as t:
        pairs = _pairs(t)
    want = [(-1, -1)] + [(k, i) for k in range(3) for i in range(20)] + [(k, -1) for k in range(3)]
    assert sorted(pairs) == sorted(want)
    assert os.listdir(tmp_path / "t.wal" / "writers") == []


def test_two_writers_in_one_process_and_a_following_reader(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    opts = TableOptions(durability="batch", flush_rows=1_000_000)
    a, b = Table(uri, options=opts), Table(uri, options=opts)
    reader = Table(uri, read_only=True)
    try:
        assert a.writer_id != b.writer_id
        a.append([{"w": "a", "i": 0}])
        b.append([{"w": "b", "i": 0}, {"w": "b", "i": 1}])
        assert a.count() == 1 and b.count() == 2  # each sees its own buffer
        a.flush()
        assert b.count() == 3  # b's next read follows a's commit
        b.flush()
        assert sorted((r["w"], r["i"]) for r in reader.scan().to_pylist()) == [("a", 0), ("b", 0), ("b", 1)]
        b.append([{"w": "b", "i": 2, "extra": 1.5}])  # a new column from one writer
        b.flush()
        a.append([{"w": "a", "i": 1}])
        a.flush()
        assert reader.schema is not None and "extra" in reader.schema.names
        assert reader.count() == 5
    finally:
        a.close()
        b.close()
        reader.close()


def test_exclusive_and_shared_writers_exclude_each_other(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.lance")
    with Table(uri) as shared:
        shared.append([{"i": 1}])
        with pytest.raises(LockedError, match="by another writer"):
            Table(uri, exclusive=True)
    with Table(uri, exclusive=True):
        with pytest.raises(LockedError):
            Table(uri)
        with Table(uri, read_only=True) as r:  # readers take no lock
            assert r.count() == 1


def test_half_built_writer_directories_left_to_live_creators_removed_when_abandoned(tmp_path: Path) -> None:
    """A ``.new-`` directory is removed by the next opener only when its creator is gone: its
    LOCK is free, or it never got a LOCK and is older than a minute. A fresh one without LOCK
    (its creator between mkdir and renaming its locked LOCK in) is left alone."""
    import fcntl
    import time

    wal = tmp_path / "wal"
    uri = str(tmp_path / "t.lance")
    with Table(uri, wal_dir=str(wal)) as t:
        t.append([{"a": 1}])
    writers = wal / "writers"
    fresh, old, unlocked, held = (writers / f".new-{n}" for n in ("fresh", "old", "unlocked", "held"))
    for d in (fresh, old, unlocked, held):
        d.mkdir()
    (fresh / ".LOCK.creating").touch()
    (old / ".LOCK.creating").touch()
    past = time.time() - 3600
    os.utime(old, (past, past))
    (unlocked / "LOCK").touch()
    (held / "LOCK").touch()
    fd = os.open(held / "LOCK", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with Table(uri, wal_dir=str(wal)) as t:
            assert t.count() == 1
        assert fresh.exists() and held.exists()
        assert not old.exists() and not unlocked.exists()
    finally:
        os.close(fd)
